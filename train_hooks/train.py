"""The training loop: AdamW, warmup + cosine, clipping, bf16 on CUDA, DDP, resumable checkpoints.

`train()` reads in one sitting: `setup` (process group, tokenizer, model, optimizer, objective),
`resume_run` (checkpoint or a fresh run folder), `make_stream`, then `train_step` and
`save_checkpoint` in a loop. The objective is a class called as `objective(**model(...))`
(train_hooks/loss.py), so a new loss or more texts per image never edit the loop.

A run folder holds `config.json`, `log.jsonl` (one line per step: loss, per-text losses, learning
rate, temperature, samples/s) and `checkpoints/step_NNNNNNN.pt` (model, optimizer, scheduler,
step, every rank's RNG state and the data position; tensors and plain values only, loaded with
`weights_only=True`, see checkpoints.py). A folder that holds anything is refused unless the run
resumes (or `overwrite` replaces an earlier run's files). Resuming loads the newest checkpoint that
loads (a torn or planted newer one is skipped with a warning), drops a torn last log line,
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

from shards.runlock import lock_output, unlock_output
from shards.storage import as_path, is_uri
from train_hooks.checkpoints import (
    checkpoint_dir,
    load_latest_loadable,
    mirror_folder,
    pull_run,
    push_run,
    rng_state,
    set_rng_state,
)
from train_hooks.config import TrainConfig, validate_train_config
from train_hooks.data import StreamConfig, list_shards, make_loader
from train_hooks.loss import LoTLIPLoss
from train_hooks.model import build_model, preset
from train_hooks.tokenizer import CornerTokenizer


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
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the name says it is complete
    os.replace(tmp, path)  # a killed save never leaves a half checkpoint under the real name
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power loss
    finally:
        os.close(dir_fd)
    for old in sorted(path.parent.glob("step_*.pt"))[:-keep]:
        old.unlink()


def _log_step(line: str) -> int | None:
    """The step of one log.jsonl line, or None for a line a crash tore mid-write."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _trim_log(log: Path, step: int) -> None:
    """Drop log lines past the resumed step, so the log is the run's one loss curve. A line that
    does not parse (the last one, torn when the run was killed mid-write) is dropped with a note."""
    if not log.is_file():
        return
    kept, torn = [], []
    for i, ln in enumerate(log.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        s = _log_step(ln) if ln.strip() else -1
        if s is None:
            torn.append(i)
        elif 0 <= s <= step:
            kept.append(ln)
    if torn:
        print(f"resume: {log}: dropped unreadable line(s) {torn} (torn by a crash mid-write)")
    log.write_text("".join(ln + "\n" for ln in kept))


class RunFolderError(ValueError):
    """`longcap train` into a folder that holds something, without --resume or --overwrite."""


# What a run writes into its folder; --overwrite removes these and nothing else.
RUN_FILES = ("config.json", "log.jsonl", "checkpoints", "keys_rank*.jsonl")


def prepare_run_folder(out: str | Path, resume: bool, overwrite: bool, main: bool) -> None:
    """Refuse a folder that holds anything (an earlier run's log and checkpoints, or a user's
    files) unless resuming; `overwrite` removes an earlier run's files, saying which."""
    import shutil

    out = Path(out)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other: choose one")
    # Dot files (a lock file, .DS_Store) do not make a folder a run.
    held = (
        sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    )
    if resume or not held:
        return
    if not overwrite:
        raise RunFolderError(
            f"{out} is not empty ({', '.join(held[:5])}{', ...' if len(held) > 5 else ''}): "
            "add --resume to continue that run, --overwrite to replace its log and "
            "checkpoints, or choose a new --out folder"
        )
    removed = [p for pattern in RUN_FILES for p in sorted(out.glob(pattern))]
    others = sorted(set(held) - {p.name for p in removed})
    if others:
        raise RunFolderError(
            f"{out} holds files that are not a longcap run's ({', '.join(others[:5])}); "
            "--overwrite only replaces a run's config.json, log.jsonl, checkpoints/ and "
            "keys_rank*.jsonl: choose a new --out folder"
        )
    if main:
        for p in removed:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
        print(f"--overwrite: removed {', '.join(p.name for p in removed)} of the run in {out}")


@dataclass
class Run:
    """What `setup` builds and the loop uses."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    out: Path
    log: Path
    tok: CornerTokenizer
    model: torch.nn.Module
    net: torch.nn.Module  # the model, wrapped in DDP under torchrun
    objective: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    batch: int  # per process
    step: int = 0
    checkpoint: Path | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def _batch_size(cfg: TrainConfig, world: int, main: bool) -> int:
    """The per-process batch, shrunk when the whole dataset is smaller than one global batch."""
    total = sum(s.count for s in list_shards(cfg.shards))
    if cfg.batch_size * world <= total:
        return cfg.batch_size
    batch = max(1, total // world)
    if main:
        print(
            f"note: {total} samples < batch {cfg.batch_size} x {world} processes; "
            f"using batch {batch}"
        )
    return batch


def setup(cfg: TrainConfig) -> Run:
    """Process group, seeds, tokenizer, model (DDP-wrapped), optimizer, schedule, objective."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    terms = 1 + cfg.mllm_short_texts + cfg.long_texts * (1 + cfg.corner_tokens)
    if cfg.loss_weights is not None and len(cfg.loss_weights) != terms:
        raise ValueError(
            f"--loss-weights has {len(cfg.loss_weights)} values; this run has {terms} text "
            f"embeddings per image ({1 + cfg.mllm_short_texts} short [CLS], then "
            f"{cfg.long_texts} long text(s) x ([CLS] + {cfg.corner_tokens} corners))"
        )
    rank, world, local_rank = _dist()
    device = _device(cfg.device, local_rank)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    tok = make_tokenizer(cfg)
    overrides: dict[str, Any] = {}
    if cfg.lock_image is not None:  # None keeps the preset's own choice
        overrides["lock_image"] = cfg.lock_image
    mcfg = preset(
        cfg.preset,
        num_corner=cfg.corner_tokens,
        text_weights=cfg.text_weights,
        vision_weights=cfg.vision_weights,
        **overrides,
    )
    model = build_model(mcfg).to(device)
    if tok.vocab_size != model.cfg.vocab_size:
        raise ValueError(
            f"tokenizer {tok.vocab_path} has {tok.vocab_size} tokens, "
            f"the text tower {model.cfg.vocab_size}"
        )
    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    warmup = cfg.warmup if cfg.warmup is not None else min(1000, max(1, cfg.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, cfg.steps))
    net = model
    if world > 1:
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    out = Path(cfg.out)
    return Run(
        cfg=cfg,
        rank=rank,
        world=world,
        device=device,
        out=out,
        log=out / "log.jsonl",
        tok=tok,
        model=model,
        net=net,
        objective=LoTLIPLoss(cfg.loss_weights),
        opt=opt,
        sched=sched,
        batch=_batch_size(cfg, world, rank == 0),
    )


def resume_run(run: Run, from_checkpoint: bool) -> None:
    """Load the run folder's latest checkpoint (model, optimizer, schedule, step, this rank's RNG)
    when asked and present; otherwise start a fresh log. Writes config.json either way."""
    cfg, out = run.cfg, run.out
    path, ck = load_latest_loadable(out, run.device) if from_checkpoint else (None, None)
    if from_checkpoint and path is None and run.main:
        print(f"resume: no checkpoint in {checkpoint_dir(out)}; starting from step 0")
    if path is not None:
        if ck["model_config"]["num_corner"] != cfg.corner_tokens:
            raise ValueError(
                f"{path}: trained with {ck['model_config']['num_corner']} corner tokens, "
                f"not {cfg.corner_tokens}; resume with --corner-tokens "
                f"{ck['model_config']['num_corner']} or start a new --out folder"
            )
        run.model.load_state_dict(ck["model"])
        run.opt.load_state_dict(ck["optimizer"])
        run.sched.load_state_dict(ck["scheduler"])
        run.step = ck["step"]
        run.checkpoint = path
        set_rng_state(ck["rng"][run.rank] if run.rank < len(ck["rng"]) else ck["rng"][0])
        if run.main:
            print(f"resumed from {path} at step {run.step}")
            _trim_log(run.log, run.step)
    elif run.main:
        out.mkdir(parents=True, exist_ok=True)
        run.log.write_text("")
    if run.main:
        (out / "config.json").write_text(
            json.dumps({"train": asdict(cfg), "model": run.model.cfg.to_dict()}, indent=1)
        )


def stream_config(cfg: TrainConfig, batch: int, mcfg) -> StreamConfig:
    """The data stream's settings from the run's: texts, image preprocessing, order."""
    return StreamConfig(
        batch_size=batch,
        text_mode=cfg.text_mode,
        subcaptions=cfg.subcaptions,
        window=cfg.window,
        mode=cfg.mode,
        long_texts=cfg.long_texts,
        mllm_short_texts=cfg.mllm_short_texts,
        dreamlip_off_by_one=cfg.dreamlip_off_by_one,
        image_size=mcfg.image_size,
        image_mean=mcfg.image_mean,
        image_std=mcfg.image_std,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
        fmt=cfg.shard_format,
        models=tuple(cfg.models) if cfg.models else None,
    )


def make_stream(run: Run):
    """The DataLoader of this rank, continuing after the batches already trained on."""
    scfg = stream_config(run.cfg, run.batch, run.model.cfg)
    return make_loader(
        run.cfg.shards, run.tok, scfg, run.cfg.num_workers, run.rank, run.world, run.step
    )


def train_step(run: Run, batch: dict[str, Any]) -> dict[str, Any]:
    """One optimizer step on one batch; returns the step's log record (without its rate)."""
    model, dev = run.model, run.device
    model.train()
    if getattr(model.cfg, "lock_image", False):
        model.vision.eval()  # a frozen trunk keeps its eval behaviour (no dropout)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    with autocast:
        model_out = run.net(
            batch["pixels"].to(dev, non_blocking=True),
            batch["short_ids"].to(dev),
            batch["short_mask"].to(dev),
            batch["long_ids"].to(dev),
            batch["long_mask"].to(dev),
        )
    losses = run.objective(**model_out)
    run.opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if run.cfg.grad_clip:
        params = [p for p in model.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, run.cfg.grad_clip)
    lr = run.opt.param_groups[0]["lr"]
    run.opt.step()
    run.sched.step()
    run.step += 1
    return {
        "step": run.step,
        "loss": float(losses["loss"].detach()),
        "losses": [float(x) for x in losses["losses"]],
        "lr": lr,
        "temperature": 1.0 / float(model.scale().detach()),
    }


def save_checkpoint(run: Run) -> None:
    """Gather every rank's RNG state; rank 0 writes the checkpoint atomically."""
    import torch.distributed as dist

    rngs: list[Any] = [None] * run.world
    if run.world > 1:
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    if not run.main:
        return
    run.checkpoint = checkpoint_dir(run.out) / f"step_{run.step:07d}.pt"
    _save(
        run.checkpoint,
        {
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "step": run.step,
            "data_position": {
                "batches_per_rank": run.step,
                "batch_size": run.batch,
                "world": run.world,
            },
            "rng": rngs,
            "model_config": run.model.cfg.to_dict(),
            "train_config": asdict(run.cfg),
            "tokenizer": run.tok.describe(),
        },
        run.cfg.keep_checkpoints,
    )


def _progress(run: Run):
    if not (run.main and run.cfg.progress):
        return None
    import sys

    from tqdm import tqdm

    # Outside a terminal (CI, logs, a piped `make demo`) a fast bar floods the log.
    interval = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(
        total=run.cfg.steps,
        initial=run.step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        mininterval=interval,
    )


def _record(run: Run, rec: dict[str, Any], keys: list[str], bar) -> None:
    """Append the step to log.jsonl (rank 0) and keys_rank{R}.jsonl (log_keys); update the bar."""
    if run.cfg.log_keys:
        with (run.out / f"keys_rank{run.rank}.jsonl").open("a") as f:
            f.write(json.dumps({"step": rec["step"], "keys": keys}) + "\n")
    if not run.main:
        return
    with run.log.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    if bar is not None:
        bar.set_postfix(
            loss=f"{rec['loss']:.4f}",
            lr=f"{rec['lr']:.2e}",
            T=f"{rec['temperature']:.4f}",
            sps=f"{rec['samples_per_s']:.0f}",
        )
        bar.update(1)


def train(
    cfg: TrainConfig, resume: bool = False, overwrite: bool = False, on_checkpoint=None
) -> dict[str, Any]:
    """Train; returns {"steps", "loss", "checkpoint", "log", "batch_size", "world", "model"}.
    resume: continue from the run folder's latest checkpoint that loads (the same loss curve).
    overwrite: replace an earlier run's files in `cfg.out` (else a non-empty folder is refused).
    on_checkpoint(run_folder): called by rank 0 after each checkpoint is written.
    A `cfg.out` URI (s3://...) trains in a local mirror pushed after every checkpoint.
    """
    import torch.distributed as dist

    if is_uri(cfg.out):
        return _train_remote(cfg, resume, overwrite)
    validate_train_config(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # one lock per run folder, held by rank 0
        lock_output(cfg.out, "longcap train")
    # Before setup: every rank checks before any rank can pass the process-group rendezvous
    # and write into the folder (the lock file, a dotfile, does not count).
    prepare_run_folder(cfg.out, resume, overwrite, int(os.environ.get("RANK", "0")) == 0)
    run = setup(cfg)
    resume_run(run, resume)
    it = iter(make_stream(run))
    bar = _progress(run)
    end = min(cfg.steps, cfg.stop_after or cfg.steps)
    loss = float("nan")
    t_last = time.perf_counter()
    while run.step < end:
        batch = next(it)
        rec = train_step(run, batch)
        now = time.perf_counter()
        rec["samples_per_s"] = run.batch * run.world / max(now - t_last, 1e-9)
        t_last, loss = now, rec["loss"]
        _record(run, rec, batch["keys"], bar)
        if run.step == end or (cfg.save_every and run.step % cfg.save_every == 0):
            save_checkpoint(run)
            if on_checkpoint is not None and run.main:
                on_checkpoint(run.out)
    if bar is not None:
        bar.close()
    del it
    if run.world > 1:
        dist.barrier()
    return {
        "steps": run.step,
        "loss": loss,
        "checkpoint": str(run.checkpoint) if run.checkpoint else None,
        "log": str(run.log),
        "batch_size": run.batch,
        "world": run.world,
        "model": run.model,
    }


def _train_remote(cfg: TrainConfig, resume: bool, overwrite: bool) -> dict[str, Any]:
    """`--out s3://...`: hold the run prefix's lock object, fill a local mirror from it
    (`pull_run`), train there, and push after every checkpoint (`push_run`)."""
    from dataclasses import replace

    remote = cfg.out
    rank0 = int(os.environ.get("RANK", "0")) == 0
    local = mirror_folder(remote)
    if rank0:
        lock_output(remote, "longcap train")
    try:
        if rank0:
            validate_train_config(cfg)
            local = pull_run(remote, resume, overwrite)
        res = train(
            replace(cfg, out=str(local)),
            resume=resume,
            on_checkpoint=lambda out: push_run(out, remote),
        )
    finally:
        if rank0:
            unlock_output(remote)
    if res["checkpoint"]:
        res["checkpoint"] = str(as_path(remote) / "checkpoints" / Path(res["checkpoint"]).name)
    res["log"] = str(as_path(remote) / "log.jsonl")
    return res
