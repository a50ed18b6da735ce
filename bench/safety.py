"""Benchmark of the hardening (issue 10) where it costs time: loading a checkpoint with
`weights_only=True` (longcap's one loader) against the old `weights_only=False`, on a real tiny
run's checkpoint and on a large synthetic one; and the typed config loader against building the
dataclass unchecked.

Run: `.venv/bin/python bench/safety.py` (under a minute on 2 cores). Prints a markdown table of
median times and the ratio; record it in docs/BENCHMARKS.md with the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tiny_checkpoint(root: Path) -> Path:
    """A real checkpoint of `longcap train` (tiny preset, 1 step, with optimizer state)."""
    from shards.assemble import AssembleConfig, assemble
    from toyworld.sample_data import make_sample
    from train_hooks.train import TrainConfig, train

    manifest = make_sample(root / "sample", n=16, seed=0, size=48, bad_rows=False)
    assemble(manifest, root / "shards", AssembleConfig(shard_size=8))
    cfg = TrainConfig(
        shards=str(root / "shards"),
        out=str(root / "run"),
        steps=1,
        batch_size=8,
        context_length=64,
        num_workers=0,
        progress=False,
    )
    return Path(train(cfg)["checkpoint"])


def big_checkpoint(root: Path, params: int) -> Path:
    """A checkpoint-shaped file of `params` float32 weights (+ Adam's two moments), RNG states
    as the trainer saves them."""
    import torch

    from train_hooks.checkpoints import rng_state

    chunk = 1 << 20
    model = {f"w{i}": torch.randn(chunk) for i in range(params // chunk)}
    opt = {"state": {i: {"exp_avg": v.clone(), "exp_avg_sq": v.clone()} for i, v in
                     enumerate(model.values())}, "param_groups": [{"lr": 1e-3}]}  # fmt: skip
    path = root / "big.pt"
    torch.save({"model": model, "optimizer": opt, "model_config": {}, "rng": [rng_state()]}, path)
    return path


def checkpoint_rows(paths: dict[str, Path], repeat: int) -> list[str]:
    import torch

    from train_hooks.checkpoints import load_checkpoint_file

    rows = []
    for name, path in paths.items():
        unsafe = _median(
            lambda p=path: torch.load(p, map_location="cpu", weights_only=False), repeat
        )
        safe = _median(lambda p=path: load_checkpoint_file(p), repeat)
        mb = path.stat().st_size / 1e6
        rows.append(
            f"| load {name} ({mb:,.0f} MB) | {unsafe * 1e3:,.1f} ms | {safe * 1e3:,.1f} ms "
            f"| {safe / unsafe:.2f} |"
        )
    return rows


def config_rows(repeat: int) -> list[str]:
    from pipeline.config_loader import load_dataclass
    from pipeline.recaption_config import ModelConfig
    from train_hooks.config import TrainConfig, validate_train_config

    train = {"shards": "s", "out": "o", "steps": 10, "batch_size": 8, "lr": 1e-3, "models": ["a"]}
    model = {"name": "m", "family": "llava-1.5", "path": "org/x", "prompts": ["a", "b"]}
    rows, n = [], 2000
    for name, cls, data, extra in [
        ("TrainConfig (+ validate)", TrainConfig, train, validate_train_config),
        ("recaption ModelConfig", ModelConfig, model, None),
    ]:

        def plain_(cls=cls, data=data):
            for _ in range(n):
                cls(**data)

        def checked(cls=cls, data=data, extra=extra):
            for _ in range(n):
                cfg = load_dataclass(cls, data, "bench")
                if extra:
                    extra(cfg)

        plain = _median(plain_, repeat) / n
        typed = _median(checked, repeat) / n
        rows.append(
            f"| config {name} | {plain * 1e6:,.1f} us | {typed * 1e6:,.1f} us "
            f"| {typed / plain:.1f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=32 << 20, help="synthetic checkpoint size")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = {"tiny run checkpoint": tiny_checkpoint(root)}
        paths[f"synthetic {args.params / 1e6:.0f}M params + Adam"] = big_checkpoint(
            root, args.params
        )
        print("| what | before (weights_only=False / unchecked) | after | ratio |")
        print("|---|---:|---:|---:|")
        for row in checkpoint_rows(paths, args.repeat) + config_rows(args.repeat):
            print(row)


if __name__ == "__main__":
    main()
