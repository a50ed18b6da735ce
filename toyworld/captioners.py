"""Tiny captioners trained on toy scenes: small VLMs of two families that learn to describe them.

Each family writes its own caption style (`toyworld.styles`): `llava-1.5` (LLaVA: CLIP vision
tower + Llama) by position in reading order, `qwen2-vl` (Qwen2-VL) column by column. They are
trained here, on CPU, on scenes drawn fresh at every step, with the family's exact prompt format
(`recaption.families`), so the normal recaption job (`family: llava-1.5` / `qwen2-vl`, a prompt
like "Describe the image in detail.") produces the caption in vLLM's CPU build.

Trained weights are committed in `toyworld/weights/<family>/` (config, safetensors, tokenizer and
processor with the chat template, `train_config.json`, `train_log.jsonl`, `heldout.json`), where
the demo, the toy experiment and the tests read them; setup never trains. On 200 held-out scenes
(780 objects), greedy, through transformers and through vLLM's CPU build (the recaption job's
engine and caption cleaner):

    llava-1.5: 98.1% of objects right, 1.9% of mentions wrong (vLLM: 98.1% / 1.9%)
    qwen2-vl:  96.5% right, 3.5% wrong                         (vLLM: 96.8% / 3.2%)

(the bar: >= 90% right, <= 5% wrong). vLLM's greedy caption equals transformers' for 99% of the
qwen2-vl scenes. They were trained on a 2-core machine shared with other jobs, one thread each:

    python -m toyworld.captioners train --family qwen2-vl --out toyworld/weights/qwen2-vl \
        --vision-minutes 2.5 --minutes 24 --threads 1 --batch-size 16 --lr 1.5e-3 \
        --vision-lr-mult 0.5                                         # 1,633 steps
    python -m toyworld.captioners train --family llava-1.5 --out /tmp/llava \
        --vision-minutes 2.5 --minutes 24 --threads 1 --batch-size 24 --lr 1.5e-3 \
        --vision-lr-mult 0.5                                         # 87.2% right: continued
    python -m toyworld.captioners train --family llava-1.5 --init /tmp/llava \
        --out toyworld/weights/llava-1.5 --minutes 10 --threads 1 --batch-size 24 --lr 6e-4 \
        --vision-lr-mult 0.5                                         # 2,100 more steps
    python -m toyworld.captioners check --dir toyworld/weights/llava-1.5 --n 200   # + vLLM

What made it work, after first runs that stayed at 42% / 21% after 27 / 40 minutes:
- stage 1 (`--vision-minutes`, `pretrain_vision`): the vision tower and projector alone learn,
  from linear heads on each image token, what its cell holds and which cell it is; without it a
  captioner learns the caption grammar blind and sits on that plateau for thousands of steps;
- one image token per grid cell (LLaVA at 72 px with patch 24, Qwen2-VL at 84 px with patch 14
  and a 2x2 merge);
- caption styles that name every cell in a fixed order, the cell before what it holds
  (`toyworld.styles`): the next cell is never a decision, and the cell just named is the query
  that finds its image token.

The seed (`--seed`, default 0) fixes initial weights and the scene stream; a time budget
(`--minutes`) makes the number of steps depend on the machine, so the config records the steps
taken, and `--steps N` (with a large `--minutes`) replays the same scene stream for N steps.

Design choices, each for speed on 2 cores:
- the saved processors map any square input (the pipeline resizes to 336 / 448) to that
  training resolution, and training goes through the same processors, with images rendered at
  sizes from 64 to 448 px and often JPEG-compressed, as downloads are;
- a byte-level BPE trained on the style's own captions and the prompts: words are single tokens,
  and any prompt still encodes and any output decodes exactly.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

from recaption.families import get_family
from recaption.prompts import render_chat_template
from toyworld.scenes import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZES,
    Scene,
    cell_labels,
    render,
    sample_scene,
)
from toyworld.styles import STYLES, accuracy
from toyworld.tiny_models import (
    _LLAVA_SPECIALS,
    _QWEN_SPECIALS,
    CHAT_TEMPLATES,
    llava_config,
    llava_processor,
    llava_tokenizer,
    qwen2_vl_config,
    qwen2_vl_processor,
    qwen_tokenizer,
    save_llava,
    save_qwen2_vl,
    train_bpe,
)

WEIGHTS = Path(__file__).resolve().parent / "weights"
FAMILIES = tuple(STYLES)
# Prompts seen in training: the recaption default first, then variants, so the caption does not
# hang on one wording (unknown words still encode through the byte-level BPE).
PROMPTS = (
    "Describe the image in detail.",
    "Describe this image in detail.",
    "What is in this picture?",
    "What is in this picture? Write a long, detailed caption.",
    "Describe the image.",
)
RENDER_SIZES = (64, 84, 96, 128, 192, 256, 336, 448)
HELDOUT_SEED_OFFSET = 1_000_003  # held-out scenes come from a stream training never draws from

# Model shapes. Text heads are 64 wide: vLLM's CPU attention wants head sizes like 32/64/80.
SPECS: dict[str, dict[str, Any]] = {
    "llava-1.5": {
        # 72 px, patch 24: 9 image tokens, one per grid cell, in reading order (so that
        # `pretrain_vision` can teach each token its cell's content).
        "image_size": 72,
        "patch_size": 24,
        "text": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 3,
            "max_position_embeddings": 512,
        },
        "vision": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "projection_dim": 128,
        },
    },
    "qwen2-vl": {
        # Any square side s: smart_resize gives 84 (3 x 28) for min 5000 <= pixels <= 9000.
        "min_pixels": 5000,
        "max_pixels": 9000,
        "text": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 3,
            "max_position_embeddings": 512,
        },
        "vision": {"depth": 2, "embed_dim": 128, "hidden_size": 128, "num_heads": 2},
    },
}


def _corpus(family: str, n: int = 3000, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    style = STYLES[family]
    texts = [style(sample_scene(rng)) for _ in range(n)]
    prompts = [chat_prompt(family, p) for p in PROMPTS]
    return texts + prompts * 50


def chat_prompt(family: str, prompt: str) -> str:
    """The prompt as the recaption engine renders it for a captioner saved here: from the chat
    template its checkpoint ships (toyworld.tiny_models.CHAT_TEMPLATES), so training and
    recaptioning see the same text."""
    return render_chat_template(
        CHAT_TEMPLATES[family], prompt, placeholder=get_family(family).image_placeholder
    )


def build(family: str, spec: dict[str, Any] | None = None, seed: int = 0):
    """(model, processor) of a fresh captioner of `family`, shaped by SPECS[family] or `spec`."""
    import torch

    spec = spec or SPECS[family]
    torch.manual_seed(seed)
    if family == "llava-1.5":
        from transformers import LlavaForConditionalGeneration

        tok = llava_tokenizer(train_bpe(_LLAVA_SPECIALS, _corpus(family), vocab_size=512))
        size, patch = spec["image_size"], spec["patch_size"]
        cfg = llava_config(
            tok,
            text=spec["text"],
            vision={**spec["vision"], "image_size": size, "patch_size": patch},
            vision_feature_layer=-1,  # a 2-layer tower: its last layer, not the penultimate
        )
        model = LlavaForConditionalGeneration(cfg)
        return model, llava_processor(tok, size, patch)
    if family == "qwen2-vl":
        from transformers import Qwen2VLForConditionalGeneration

        tok = qwen_tokenizer(train_bpe(_QWEN_SPECIALS, _corpus(family), vocab_size=512))
        model = Qwen2VLForConditionalGeneration(
            qwen2_vl_config(tok, text=spec["text"], vision=spec["vision"])
        )
        return model, qwen2_vl_processor(tok, spec["min_pixels"], spec["max_pixels"])
    raise ValueError(f"no captioner family {family!r}; one of {list(FAMILIES)}")


def serve_like(scene: Scene, rng: random.Random, size: int | None = None, jpeg: bool | None = None):
    """The scene as a captioner sees it through the pipeline: rendered at some size (random
    unless given), JPEG-compressed half of the time (unless given)."""
    from PIL import Image

    img = render(scene, size or rng.choice(RENDER_SIZES), rng)
    if jpeg if jpeg is not None else rng.random() < 0.5:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(70, 95))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def make_batch(family: str, processor, scenes: list[Scene], rng: random.Random, images=None):
    """Processor inputs plus `labels` (caption and end token only; prompt, image, pad: -100)."""
    style = STYLES[family]
    images = images or [serve_like(s, rng) for s in scenes]
    prompts = [chat_prompt(family, rng.choice(PROMPTS)) for _ in scenes]
    sep = " " if family == "llava-1.5" else ""  # llava: "ASSISTANT: caption"; qwen: after "\n"
    eos = processor.tokenizer.eos_token
    texts = [p + sep + style(s) + eos for p, s in zip(prompts, scenes, strict=True)]
    tok = processor.tokenizer
    tok.padding_side = "right"
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
    prompt_only = processor(images=images[:1] * len(prompts), text=prompts, padding=False)
    labels = batch["input_ids"].clone()
    for i, ids in enumerate(prompt_only["input_ids"]):
        n = len(ids)
        # The caption must continue the prompt's tokens exactly, as vLLM's prompt will be.
        if batch["input_ids"][i, :n].tolist() != list(ids):
            raise RuntimeError(f"{family}: prompt tokens change when the caption follows")
        labels[i, :n] = -100
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    return batch


def generate(family: str, model, processor, images, prompt: str = PROMPTS[0], max_new_tokens=160):
    """Greedy captions from transformers for PIL images (the held-out check's reference path)."""
    import torch

    tok = processor.tokenizer
    tok.padding_side = "left"
    out = []
    model.eval()
    for i in range(0, len(images), 50):
        chunk = images[i : i + 50]
        inputs = processor(
            images=chunk,
            text=[chat_prompt(family, prompt)] * len(chunk),
            return_tensors="pt",
            padding=True,
        )
        with torch.no_grad():
            ids = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        out += tok.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    tok.padding_side = "right"
    return [t.strip() for t in out]


def heldout(family: str, n: int, seed: int = 0):
    """n held-out (scene, image) pairs, rendered at the family's pipeline size as JPEG."""
    rng = random.Random(HELDOUT_SEED_OFFSET + seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    size = get_family(family).image_size
    return scenes, [serve_like(s, rng, size=size, jpeg=True) for s in scenes]


def check_transformers(family: str, model, processor, n: int = 200, seed: int = 0) -> dict:
    scenes, images = heldout(family, n, seed)
    captions = generate(family, model, processor, images)
    return {**accuracy(scenes, captions), "examples": captions[:3], "captions": captions}


def check_vllm(model_dir: str | Path, family: str, n: int = 200, seed: int = 0) -> dict:
    """Held-out accuracy through the recaption job's own engine (vLLM CPU, greedy) and its
    caption cleaner, as the stored long captions would be."""
    from pipeline.recaption_config import ModelConfig
    from recaption.clean import clean_caption
    from recaption.engine import CaptionEngine

    cfg = ModelConfig(
        name=family,
        family=family,
        path=str(model_dir),
        prompts=[PROMPTS[0]],
        max_tokens=160,
        temperature=0.0,
        max_model_len=512,
    )
    engine = CaptionEngine(cfg)
    scenes, images = heldout(family, n, seed)
    gens = engine.generate([f"{i:05d}" for i in range(n)], images)
    captions = [clean_caption(g.raw_text, g.finish_reason).text for g in gens]
    return {**accuracy(scenes, captions), "examples": captions[:3], "captions": captions}


def image_tokens(family: str, model, inputs):
    """The image tokens the language model reads, [B, 9, D]: one per grid cell, row-major
    (LLaVA: one patch per cell; Qwen2-VL: one 2x2-merged token per cell)."""
    import torch

    if family == "llava-1.5":
        out = model.get_image_features(
            pixel_values=inputs["pixel_values"],
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        )
    else:
        out = model.get_image_features(
            pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]
        )
    feats = torch.stack(list(out.pooler_output))
    if feats.shape[1] != 9:
        raise RuntimeError(f"{family}: {feats.shape[1]} image tokens, expected one per cell (9)")
    return feats


def cell_targets(scenes: list[Scene]):
    """`scenes.cell_labels` of a batch as tensors: ({"shape", "color", "size"}: [B, 9], bg: [B])."""
    import torch

    labels = [cell_labels(s) for s in scenes]
    names = ("shape", "color", "size")
    targets = {n: torch.tensor([lab[i] for lab in labels]) for i, n in enumerate(names)}
    return targets, torch.tensor([lab[3] for lab in labels])


def pretrain_vision(
    family: str,
    model,
    processor,
    rng: random.Random,
    minutes: float,
    batch_size: int = 64,
    lr: float = 2e-3,
    log_every: int = 50,
) -> list[dict[str, Any]]:
    """Stage 1: teach the vision tower and projector, alone, what each cell holds. Linear heads
    on each image token predict its cell's shape, colour and size (or empty) and which cell it
    is, and the mean token the background; the heads are dropped afterwards. Without this
    stage a captioner first learns the caption grammar blind and sits on that plateau for
    thousands of steps."""
    import torch
    from torch import nn

    dim = model.config.text_config.hidden_size
    heads = nn.ModuleDict(
        {
            "shape": nn.Linear(dim, 1 + len(SHAPES)),
            "color": nn.Linear(dim, 1 + len(COLORS)),
            "size": nn.Linear(dim, 1 + len(SIZES)),
            "background": nn.Linear(dim, len(BACKGROUNDS)),
            "cell": nn.Linear(dim, 9),
        }
    )
    vision = [p for n, p in model.named_parameters() if _is_vision(n)]
    opt = torch.optim.AdamW([*vision, *heads.parameters()], lr=lr, weight_decay=0.01)
    log: list[dict[str, Any]] = []
    t0, step, running, acc = time.monotonic(), 0, None, None
    model.train()
    while time.monotonic() - t0 < minutes * 60:
        scenes = [sample_scene(rng) for _ in range(batch_size)]
        inputs = processor.image_processor(
            [serve_like(s, rng) for s in scenes], return_tensors="pt"
        )
        feats = image_tokens(family, model, inputs)
        targets, bg = cell_targets(scenes)
        # Which cell a token is, too: the language model finds a cell's token by its content
        # (positions in the text vary), so each token must also say where it is.
        targets["cell"] = torch.arange(9).expand(batch_size, 9)
        loss = nn.functional.cross_entropy(heads["background"](feats.mean(1)), bg)
        right = torch.ones(batch_size, 9, dtype=torch.bool)
        for name, t in targets.items():
            logits = heads[name](feats)
            loss = loss + nn.functional.cross_entropy(logits.flatten(0, 1), t.flatten())
            right &= logits.argmax(-1) == t
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vision, 1.0)  # an unclipped run spiked (loss 0.4 -> 1.9)
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        cells = right.float().mean().item()
        acc = cells if acc is None else 0.9 * acc + 0.1 * cells
        if step % log_every == 0:
            entry = {
                "stage": "vision",
                "step": step,
                "loss": round(running, 4),
                "cells_right": round(acc, 4),
                "seconds": round(time.monotonic() - t0, 1),
            }
            log.append(entry)
            print(json.dumps(entry), flush=True)
    return log


def train(
    family: str,
    out: str | Path | None,
    minutes: float = 11.0,
    steps: int | None = None,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int = 2,
    log_every: int = 50,
    check_n: int = 200,
    spec: dict[str, Any] | None = None,
    init: str | Path | None = None,
    vision_lr_mult: float = 3.0,
    save_every: int = 500,
    vision_minutes: float = 0.0,
) -> dict[str, Any]:
    """Train a captioner of `family` on fresh scenes until `steps` or `minutes` run out, check it
    on `check_n` held-out scenes (transformers, greedy) and save everything to `out` (None: do
    not save). `init`: continue from a saved captioner instead of fresh weights (its
    train_config.json then records the earlier runs).
    Returns {"model", "processor", "log", "heldout", "config"}."""
    import torch

    torch.set_num_threads(threads)
    config = {
        "family": family,
        "minutes": minutes,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "threads": threads,
        "spec": spec or SPECS[family],
        "prompts": list(PROMPTS),
        "render_sizes": list(RENDER_SIZES),
        "vision_lr_mult": vision_lr_mult,
        "vision_minutes": vision_minutes,
    }
    if init is not None:
        init_family, model, processor = load(init)
        if init_family != family:
            raise ValueError(f"--init {init} holds a {init_family} captioner, not {family}")
        earlier = json.loads((Path(init) / "train_config.json").read_text())
        config["spec"] = earlier["spec"]
        config["earlier_runs"] = [*earlier.pop("earlier_runs", []), earlier]
        stream = seed + 1 + len(config["earlier_runs"])  # a new scene stream, not one seen
    else:
        model, processor = build(family, spec, seed)
        stream = seed
    rng = random.Random(stream)
    log: list[dict[str, Any]] = []
    if vision_minutes:
        log += pretrain_vision(family, model, processor, rng, vision_minutes, log_every=log_every)
    # The vision side learns faster than the language model by default: a captioner first
    # learns the caption grammar blind (loss plateau at the entropy of the scene's attributes)
    # and the image has to pull it off that plateau.
    vision = [p for n, p in model.named_parameters() if _is_vision(n)]
    text = [p for n, p in model.named_parameters() if not _is_vision(n)]
    opt = torch.optim.AdamW(
        [{"params": text, "mult": 1.0}, {"params": vision, "mult": vision_lr_mult}],
        lr=lr,
        weight_decay=0.01,
    )
    warmup = 0 if init is not None else 50
    t0 = time.monotonic()
    budget = minutes * 60
    step, running = 0, None
    model.train()
    while True:
        done = max(step / steps if steps else 0.0, (time.monotonic() - t0) / budget)
        if done >= 1.0:
            break
        # Warm up, hold, then cosine down to 5% over the last 30% of the run.
        scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if done > 0.7:
            scale *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (done - 0.7) / 0.3))
        for g in opt.param_groups:
            g["lr"] = lr * scale * g["mult"]
        batch = make_batch(family, processor, [sample_scene(rng) for _ in range(batch_size)], rng)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if step % log_every == 0:
            entry = {
                "step": step,
                "loss": round(running, 4),
                "lr": lr * scale,
                "seconds": round(time.monotonic() - t0, 1),
            }
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if out is not None and save_every and step % save_every == 0:
            # A checkpoint to fall back on (or continue with --init) if the run is stopped.
            config["steps_taken"] = step
            save(family, model, processor, Path(out), config, log, {})
    config["steps_taken"] = step
    config["train_seconds"] = round(time.monotonic() - t0, 1)
    result = check_transformers(family, model, processor, check_n, seed) if check_n else {}
    result.pop("captions", None)
    if result:
        print(json.dumps({"heldout_transformers": result}), flush=True)
    if out is not None:
        save(family, model, processor, Path(out), config, log, result)
    return {"model": model, "processor": processor, "log": log, "heldout": result, "config": config}


def _is_vision(name: str) -> bool:
    return any(k in name for k in ("vision_tower", "multi_modal_projector", "visual"))


def save(family, model, processor, out: Path, config, log, result) -> Path:
    """Write the checkpoint vLLM loads, plus the training config, log and held-out result."""
    if family == "llava-1.5":
        save_llava(model, processor, out)
    else:
        save_qwen2_vl(model, processor, out)
    (out / "train_config.json").write_text(json.dumps(config, indent=1) + "\n")
    (out / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    (out / "heldout.json").write_text(json.dumps({"transformers": result}, indent=1) + "\n")
    return out


def load(model_dir: str | Path):
    """(family, model, processor) of a saved captioner."""
    from transformers import (
        AutoProcessor,
        LlavaForConditionalGeneration,
        Qwen2VLForConditionalGeneration,
    )

    model_dir = Path(model_dir)
    family = json.loads((model_dir / "train_config.json").read_text())["family"]
    cls = (
        LlavaForConditionalGeneration if family == "llava-1.5" else Qwen2VLForConditionalGeneration
    )
    return family, cls.from_pretrained(model_dir), AutoProcessor.from_pretrained(model_dir)


def _cmd_check(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    family, model, processor = load(args.dir)
    report = {"n": args.n, "seed": args.seed}
    tf = check_transformers(family, model, processor, args.n, args.seed)
    report["transformers"] = {k: v for k, v in tf.items() if k != "captions"}
    print(json.dumps({"transformers": report["transformers"]}), flush=True)
    if not args.no_vllm:
        vl = check_vllm(args.dir, family, args.n, args.seed)
        report["vllm"] = {k: v for k, v in vl.items() if k != "captions"}
        # vLLM runs bfloat16, training float32: how often greedy decoding still agrees.
        same = sum(a == b for a, b in zip(tf["captions"], vl["captions"], strict=True))
        report["vllm"]["same_caption_as_transformers"] = same / max(len(tf["captions"]), 1)
        print(json.dumps({"vllm": report["vllm"]}), flush=True)
    path = Path(args.dir) / "heldout.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    # Keep what training measured at its end next to this check.
    report["at_end_of_training"] = earlier.get("at_end_of_training", earlier.get("transformers"))
    path.write_text(json.dumps(report, indent=1) + "\n")
    ok = all(
        r["correct"] >= 0.9 and r["hallucinated"] <= 0.05
        for k, r in report.items()
        if k in ("transformers", "vllm")
    )
    print("meets the bar (>= 90% correct, <= 5% hallucinated)" if ok else "BELOW the bar")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m toyworld.captioners",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one family's captioner and save it")
    t.add_argument("--family", required=True, choices=FAMILIES)
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=11.0)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--init", default=None, help="continue training this saved captioner")
    t.add_argument("--vision-lr-mult", type=float, default=3.0)
    t.add_argument(
        "--vision-minutes",
        type=float,
        default=0.0,
        help="first train the vision side alone on per-cell labels (stage 1) for this long",
    )
    t.add_argument("--spec", default=None, help="JSON model shape replacing SPECS[family]")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    c = sub.add_parser("check", help="held-out accuracy with transformers and vLLM CPU")
    c.add_argument("--dir", required=True)
    c.add_argument("--n", type=int, default=200)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--no-vllm", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "train":
        train(
            args.family,
            args.out,
            args.minutes,
            args.steps,
            args.batch_size,
            args.lr,
            args.seed,
            args.threads,
            init=args.init,
            vision_lr_mult=args.vision_lr_mult,
            vision_minutes=args.vision_minutes,
            spec=json.loads(args.spec) if args.spec else None,
        )
        return 0
    return _cmd_check(args)


if __name__ == "__main__":
    sys.exit(main())
