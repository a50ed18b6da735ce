"""The training loop: AdamW, warmup + cosine, clipping, bf16 on CUDA, DDP, resumable checkpoints.

A run folder holds `config.json`, `log.jsonl` (one line per step: loss, per-text losses, learning
rate, temperature, samples/s) and `checkpoints/step_NNNNNNN.pt` (model, optimizer, scheduler,
step, every rank's RNG state and the data position). Resuming loads the latest checkpoint,
restarts the stream after the batches already consumed, and so continues the same loss curve.
Under torchrun each process trains on its own slice of the shards (see data.py); the loss is
computed over the gathered global batch (see loss.py).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train_hooks.data import StreamConfig, list_shards, make_loader
from train_hooks.loss import lotlip_loss
from train_hooks.model import build_model, preset
from train_hooks.sampling import ONE_MODEL
from train_hooks.tokenizer import CornerTokenizer


@dataclass
class TrainConfig:
    """Everything `longcap train` takes; saved in the run folder and in every checkpoint."""

    shards: str
    out: str
    preset: str = "tiny"
    corner_tokens: int = 2  # K
    subcaptions: int = 4  # k
    window: int = 1  # m
    mode: str = ONE_MODEL
    models: list[str] | None = None  # only these models' long captions (default: all)
    context_length: int = 192
    steps: int = 100
    batch_size: int = 32  # per process
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int | None = None  # default: 10% of steps, at most 1000
    grad_clip: float = 1.0
    lock_image: bool = False
    loss_weights: list[float] | None = None
    seed: int = 0
    num_workers: int = 2
    shuffle_buffer: int = 1000
    shard_format: str = "auto"
    text_weights: str | None = None
    vision_weights: str | None = None
    vocab: str | None = None
    save_every: int | None = None  # default: only at the end
    keep_checkpoints: int = 3
    device: str = "auto"
    progress: bool = True
    stop_after: int | None = None  # stop (with a checkpoint) at this step, schedule unchanged
    log_keys: bool = False  # write keys_rank{R}.jsonl: which samples each rank trained on


def checkpoint_dir(run: str | Path) -> Path:
    return Path(run) / "checkpoints"


def latest_checkpoint(run: str | Path) -> Path | None:
    """The newest checkpoint of a run folder, or None."""
    found = sorted(checkpoint_dir(run).glob("step_*.pt"))
    return found[-1] if found else None


def _dist() -> tuple[int, int, int]:
    """(rank, world, local rank), initialising the process group under torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if world > 1:
        return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on norms, biases and the temperature (tensors below 2-D)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(warmup: int, steps: int):
    """Multiplier of the base learning rate: linear warmup, then cosine down to 0."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return f


def make_tokenizer(cfg: TrainConfig) -> CornerTokenizer:
    vocab = cfg.vocab
    if vocab is None and cfg.text_weights and (Path(cfg.text_weights) / "vocab.txt").is_file():
        vocab = cfg.text_weights
    return CornerTokenizer(vocab, cfg.corner_tokens, cfg.context_length)


def _save(path: Path, obj: dict[str, Any], keep: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a killed save never leaves a half checkpoint under the real name
    for old in sorted(path.parent.glob("step_*.pt"))[:-keep]:
        old.unlink()


def _trim_log(log: Path, step: int) -> None:
    """Drop log lines past the resumed step, so the log is the run's one loss curve."""
    if log.is_file():
        lines = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        log.write_text("".join(ln + "\n" for ln in lines))


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train; returns {"steps", "loss", "checkpoint", "log", "batch_size", "world", "model"}."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world, local_rank = _dist()
    device = _device(cfg.device, local_rank)
    out = Path(cfg.out)
    main = rank == 0
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)

    tok = make_tokenizer(cfg)
    mcfg = preset(
        cfg.preset,
        num_corner=cfg.corner_tokens,
        text_weights=cfg.text_weights,
        vision_weights=cfg.vision_weights,
    )
    model = build_model(mcfg).to(device)
    mcfg = model.cfg
    if tok.vocab_size != mcfg.vocab_size:
        raise ValueError(
            f"tokenizer {tok.vocab_path} has {tok.vocab_size} tokens, "
            f"the text tower {mcfg.vocab_size}"
        )
    if cfg.lock_image:
        # LiT-style: the image tower is frozen (its projection still learns).
        for p in model.vision.parameters():
            p.requires_grad_(False)
        model.vision.eval()

    total = sum(s.count for s in list_shards(cfg.shards))
    batch = cfg.batch_size
    if batch * world > total:
        batch = max(1, total // world)
        if main:
            print(
                f"note: {total} samples < batch {cfg.batch_size} x {world} processes; "
                f"using batch {batch}"
            )
    warmup = cfg.warmup if cfg.warmup is not None else min(1000, max(1, cfg.steps // 10))
    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, cfg.steps))

    step = 0
    log = out / "log.jsonl"
    ckpt_path = latest_checkpoint(out) if resume else None
    if resume and ckpt_path is None and main:
        print(f"resume: no checkpoint in {checkpoint_dir(out)}; starting from step 0")
    if ckpt_path is not None:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["model_config"]["num_corner"] != cfg.corner_tokens:
            raise ValueError(
                f"{ckpt_path}: trained with {ck['model_config']['num_corner']} corner tokens, "
                f"not {cfg.corner_tokens}"
            )
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step = ck["step"]
        _set_rng_state(ck["rng"][rank] if rank < len(ck["rng"]) else ck["rng"][0])
        if main:
            print(f"resumed from {ckpt_path} at step {step}")
            _trim_log(log, step)
    elif main:
        out.mkdir(parents=True, exist_ok=True)
        log.write_text("")
    if main:
        (out / "config.json").write_text(
            json.dumps({"train": asdict(cfg), "model": mcfg.to_dict()}, indent=1)
        )

    scfg = StreamConfig(
        batch_size=batch,
        subcaptions=cfg.subcaptions,
        window=cfg.window,
        mode=cfg.mode,
        image_size=mcfg.image_size,
        image_mean=mcfg.image_mean,
        image_std=mcfg.image_std,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
        fmt=cfg.shard_format,
        models=tuple(cfg.models) if cfg.models else None,
    )
    loader = make_loader(cfg.shards, tok, scfg, cfg.num_workers, rank, world, start_batch=step)
    net = (
        DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        if world > 1
        else model
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]

    bar = None
    if main and cfg.progress:
        import sys

        from tqdm import tqdm

        # Outside a terminal (CI, logs, a piped `make demo`) a fast bar floods the log.
        interval = 0.1 if sys.stderr.isatty() else 10.0
        bar = tqdm(
            total=cfg.steps,
            initial=step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            mininterval=interval,
        )
    ckpt = ckpt_path
    loss_val = float("nan")
    it = iter(loader)
    t_last = time.perf_counter()
    end = min(cfg.steps, cfg.stop_after or cfg.steps)
    while step < end:
        b = next(it)
        model.train()
        if cfg.lock_image:
            model.vision.eval()
        with autocast:
            img, txt, scale = net(
                b["pixels"].to(device, non_blocking=True),
                b["short_ids"].to(device),
                b["short_mask"].to(device),
                b["long_ids"].to(device),
                b["long_mask"].to(device),
                lock_image=cfg.lock_image,
            )
        loss, per = lotlip_loss(img, txt, scale, cfg.loss_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        step += 1
        now = time.perf_counter()
        rate = batch * world / max(now - t_last, 1e-9)
        t_last = now
        loss_val = float(loss.detach())
        rec = {
            "step": step,
            "loss": loss_val,
            "losses": [float(x) for x in per],
            "lr": lr,
            "temperature": 1.0 / float(model.scale().detach()),
            "samples_per_s": rate,
        }
        if cfg.log_keys:
            with (out / f"keys_rank{rank}.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, "keys": b["keys"]}) + "\n")
        if main:
            with log.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            if bar is not None:
                bar.set_postfix(
                    loss=f"{loss_val:.4f}",
                    lr=f"{lr:.2e}",
                    T=f"{rec['temperature']:.4f}",
                    sps=f"{rate:.0f}",
                )
                bar.update(1)
        if step == end or (cfg.save_every and step % cfg.save_every == 0):
            rngs = [None] * world
            if world > 1:
                dist.all_gather_object(rngs, _rng_state())
            else:
                rngs = [_rng_state()]
            if main:
                ckpt = checkpoint_dir(out) / f"step_{step:07d}.pt"
                _save(
                    ckpt,
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "step": step,
                        "data_position": {
                            "batches_per_rank": step,
                            "batch_size": batch,
                            "world": world,
                        },
                        "rng": rngs,
                        "model_config": mcfg.to_dict(),
                        "train_config": asdict(cfg),
                        "tokenizer": tok.describe(),
                    },
                    cfg.keep_checkpoints,
                )
    if bar is not None:
        bar.close()
    del it
    if world > 1:
        dist.barrier()
    return {
        "steps": step,
        "loss": loss_val,
        "checkpoint": str(ckpt) if ckpt else None,
        "log": str(log),
        "batch_size": batch,
        "world": world,
        "model": model,
    }
