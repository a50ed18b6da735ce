"""A toy stand-in for an ImageNet-pretrained ViT: the frozen image tower of the toy experiment.

LoTLIP trains its text tower against a locked, pretrained image trunk (LiT; a timm ViT-B/16
trained on ImageNet-21k, docs/MODEL.md). The toy world needs the same: an image tower that
already sees everything in a scene before any caption is involved. This module trains one, the
project's own `train_hooks.towers.ImageEncoder` (timm's class-token ViT), with supervised labels
as ImageNet pretraining does, here multi-label: from the [CLS] feature, linear heads predict the
shape, colour and size of what each of the nine cells holds (or that it is empty) and the
background (`toyworld.scenes.cell_labels`). The heads are dropped; the trunk is saved in timm's
layout (`model.safetensors` with timm key names and a `config.json` naming the heads), so the
trainer loads it like any timm checkpoint: `longcap train --vision-weights DIR --lock-image`.

Images go through the trainer's own preprocessing (`train_hooks.data.image_to_tensor`, CLIP
mean/std) after the pipeline's round trip (`toyworld.captioners.serve_like`: any size, often
JPEG), so what the tower learned holds for the images the experiment's shards carry.

    python -m toyworld.image_tower train --out toyworld/weights/image_tower --minutes 8

writes the tower, `train_config.json`, `train_log.jsonl` and `heldout.json` (the heads' accuracy
on held-out scenes at the end of training: cells fully right, whole scenes right).

The committed tower is small (about 0.8 M parameters, 3 MB) and setup never trains it.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from toyworld.scenes import BACKGROUNDS, COLORS, SHAPES, SIZES, Scene, cell_labels, sample_scene

WEIGHTS = Path(__file__).resolve().parent / "weights" / "image_tower"
# 48 px with patch 8: a 6 x 6 grid of patches, 2 x 2 per scene cell.
SPEC: dict[str, int] = {
    "image_size": 48,
    "patch_size": 8,
    "width": 128,
    "layers": 4,
    "heads": 4,
    "mlp": 256,
}
STORED_SIZES = (48, 64, 96, 128, 192, 256)
HELDOUT_SEED = 2_000_003  # held-out check scenes: a stream training never draws from
_HEADS = (("shape", 1 + len(SHAPES)), ("color", 1 + len(COLORS)), ("size", 1 + len(SIZES)))


def build(spec: dict[str, int] | None = None, seed: int = 0):
    """A fresh `ImageEncoder` shaped by SPEC (or `spec`)."""
    import torch

    from train_hooks.towers import ImageEncoder, init_weights

    s = spec or SPEC
    torch.manual_seed(seed)
    enc = ImageEncoder(
        s["image_size"], s["patch_size"], s["width"], s["layers"], s["heads"], s["mlp"]
    )
    init_weights(enc)
    return enc


def pixels(scenes: list[Scene], rng: random.Random, size: int):
    """[B, 3, size, size]: each scene served as the pipeline stores it, then the trainer's own
    preprocessing (decode, resize, crop, CLIP normalisation)."""
    import torch

    from toyworld.captioners import serve_like
    from train_hooks.data import image_to_tensor
    from train_hooks.model import CLIP_MEAN, CLIP_STD

    out = []
    for s in scenes:
        buf = io.BytesIO()
        # Shards store what img2dataset wrote (the demo: 128 px JPEG): small sizes suffice.
        img = serve_like(s, rng, size=rng.choice(STORED_SIZES), jpeg=False)
        img.save(buf, "JPEG", quality=rng.randint(75, 95))
        out.append(image_to_tensor(buf.getvalue(), size, CLIP_MEAN, CLIP_STD))
    return torch.stack(out)


class _Heads:
    """The pretraining heads on the [CLS] feature (dropped after training)."""

    def __init__(self, width: int) -> None:
        from torch import nn

        self.cells = nn.Linear(width, 9 * sum(n for _, n in _HEADS))
        self.background = nn.Linear(width, len(BACKGROUNDS))

    def parameters(self):
        return [*self.cells.parameters(), *self.background.parameters()]

    def loss_and_right(self, feats, scenes: list[Scene]):
        """(loss, [B, 9] cell fully right, [B] background right)."""
        import torch
        from torch.nn import functional as F

        labels = [cell_labels(s) for s in scenes]
        logits = self.cells(feats).view(len(scenes), 9, -1)
        bg_logits = self.background(feats)
        bg = torch.tensor([lab[3] for lab in labels])
        loss = F.cross_entropy(bg_logits, bg)
        right = torch.ones(len(scenes), 9, dtype=torch.bool)
        start = 0
        for i, (_, n) in enumerate(_HEADS):
            t = torch.tensor([lab[i] for lab in labels])  # [B, 9]
            part = logits[..., start : start + n]
            loss = loss + F.cross_entropy(part.flatten(0, 1), t.flatten())
            right &= part.argmax(-1) == t
            start += n
        return loss, right, bg_logits.argmax(-1) == bg


def train(
    out: str | Path | None,
    minutes: float = 8.0,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    threads: int = 2,
    log_every: int = 50,
    spec: dict[str, int] | None = None,
    check_n: int = 500,
    init: str | Path | None = None,
) -> dict[str, Any]:
    """Pretrain the tower on fresh scenes for `minutes`, check it on held-out scenes and save
    it to `out` (None: do not save). `init`: continue a saved tower (its heads start afresh;
    its train_config.json then records the earlier runs). Returns {"encoder", "log",
    "heldout", "config"}."""
    import math

    import torch

    torch.set_num_threads(threads)
    spec = spec or SPEC
    earlier: list[dict[str, Any]] = []
    if init is not None:
        enc = load(init).train()
        prev = json.loads((Path(init) / "train_config.json").read_text())
        spec = prev["spec"]
        earlier = [*prev.pop("earlier_runs", []), prev]
        seed += len(earlier)  # a scene stream not seen before
    else:
        enc = build(spec, seed)
    heads = _Heads(spec["width"])
    params = [*enc.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    rng = random.Random(seed)
    log: list[dict[str, Any]] = []
    t0, step, running, acc = time.monotonic(), 0, None, None
    budget = minutes * 60
    enc.train()
    while (done := (time.monotonic() - t0) / budget) < 1.0:
        # Warm up over 100 steps, cosine down to 5% over the run's time.
        scale = min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        scenes = [sample_scene(rng) for _ in range(batch_size)]
        loss, right, _ = heads.loss_and_right(enc(pixels(scenes, rng, spec["image_size"])), scenes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        cells = right.float().mean().item()
        acc = cells if acc is None else 0.9 * acc + 0.1 * cells
        if step % log_every == 0:
            entry = {
                "step": step,
                "loss": round(running, 4),
                "cells_right": round(acc, 4),
                "lr": lr * scale,
                "seconds": round(time.monotonic() - t0, 1),
            }
            log.append(entry)
            print(json.dumps(entry), flush=True)
    config = {
        "spec": spec,
        "minutes": minutes,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "threads": threads,
        "steps_taken": step,
        "train_seconds": round(time.monotonic() - t0, 1),
        "earlier_runs": earlier,
    }
    result = check(enc, heads, check_n) if check_n else {}
    if result:
        print(json.dumps({"heldout": result}), flush=True)
    if out is not None:
        save(enc, spec, Path(out), config, log, result)
    return {"encoder": enc, "log": log, "heldout": result, "config": config}


def check(enc, heads: _Heads, n: int = 500) -> dict[str, float]:
    """Held-out accuracy of the pretraining heads: cells fully right, whole scenes right."""
    import torch

    rng = random.Random(HELDOUT_SEED)
    scenes = [sample_scene(rng) for _ in range(n)]
    enc.eval()
    with torch.no_grad():
        feats = torch.cat(
            [
                enc(pixels(scenes[i : i + 100], rng, enc.patch.stride[0] * _grid(enc)))
                for i in range(0, n, 100)
            ]
        )
        _, right, bg = heads.loss_and_right(feats, scenes)
    return {
        "scenes": n,
        "cells_right": round(right.float().mean().item(), 4),
        "scenes_right": round(right.all(1).float().mean().item(), 4),
        "background_right": round(bg.float().mean().item(), 4),
    }


def _grid(enc) -> int:
    return int(round((enc.pos_emb.shape[1] - 1) ** 0.5))


def timm_state(enc) -> dict[str, Any]:
    """The encoder's tensors under timm's VisionTransformer names (q, k, v fused into qkv), the
    inverse of `train_hooks.weights`' timm reader."""
    import torch

    sd = enc.state_dict()
    out = {
        "cls_token": sd["cls_token"],
        "pos_embed": sd["pos_emb"],
        "patch_embed.proj.weight": sd["patch.weight"],
        "patch_embed.proj.bias": sd["patch.bias"],
        "norm.weight": sd["ln_final.weight"],
        "norm.bias": sd["ln_final.bias"],
    }
    for i in range(len(enc.layers)):
        a, b = f"layers.{i}.", f"blocks.{i}."
        for ours, theirs in (("ln1", "norm1"), ("ln2", "norm2"), ("attn.o", "attn.proj")):
            for p in ("weight", "bias"):
                out[f"{b}{theirs}.{p}"] = sd[f"{a}{ours}.{p}"]
        for ours in ("fc1", "fc2"):
            for p in ("weight", "bias"):
                out[f"{b}mlp.{ours}.{p}"] = sd[f"{a}{ours}.{p}"]
        for p in ("weight", "bias"):
            out[f"{b}attn.qkv.{p}"] = torch.cat([sd[f"{a}attn.{x}.{p}"] for x in "qkv"])
    return {k: v.contiguous() for k, v in out.items()}


def save(enc, spec: dict[str, int], out: Path, config, log, result) -> Path:
    """timm layout (model.safetensors + config.json) plus the training record."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(timm_state(enc), str(out / "model.safetensors"))
    timm_cfg = {
        "architecture": f"vit_toy_patch{spec['patch_size']}_{spec['image_size']}",
        "model_args": {
            "img_size": spec["image_size"],
            "patch_size": spec["patch_size"],
            "embed_dim": spec["width"],
            "depth": spec["layers"],
            "num_heads": spec["heads"],
            "mlp_ratio": spec["mlp"] / spec["width"],
        },
        "num_classes": 0,
    }
    (out / "config.json").write_text(json.dumps(timm_cfg, indent=1) + "\n")
    (out / "train_config.json").write_text(json.dumps(config, indent=1) + "\n")
    (out / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    (out / "heldout.json").write_text(json.dumps(result, indent=1) + "\n")
    return out


def load(folder: str | Path = WEIGHTS):
    """The saved tower as an `ImageEncoder`, read through the trainer's own timm reader."""
    from train_hooks.weights import load_tower, read_vision_weights

    w = read_vision_weights(folder)
    s = w.shapes
    enc = build(
        {
            "image_size": s["image_size"],
            "patch_size": s["patch_size"],
            "width": s["vision_width"],
            "layers": s["vision_layers"],
            "heads": s["vision_heads"],
            "mlp": s["vision_mlp"],
        }
    )
    load_tower(enc, w)
    return enc.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m toyworld.image_tower",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="pretrain the toy image tower and save it (timm layout)")
    t.add_argument("--out", default=str(WEIGHTS))
    t.add_argument("--minutes", type=float, default=8.0)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--init", default=None, help="continue training this saved tower")
    args = p.parse_args(argv)
    train(args.out, args.minutes, args.batch_size, args.lr, args.seed, args.threads, init=args.init)
    return 0


if __name__ == "__main__":
    sys.exit(main())
