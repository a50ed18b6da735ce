"""Benchmark of the trainer: the shard loader against a plain webdataset read of the same tars,
and a training step with K corner tokens against K = 0 at the same context length.

Run: `.venv/bin/python bench/train.py` (a few minutes on 2 cores). Prints a markdown table;
record it in docs/BENCHMARKS.md with the machine. Target: K <= 4 within 5% of K = 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_shards(root: Path, n: int) -> Path:
    from pipeline.sample_data import make_sample
    from shards.assemble import AssembleConfig, assemble

    manifest = make_sample(root / "sample", n=n, seed=0, size=256, bad_rows=False)
    assemble(manifest, root / "shards", AssembleConfig(shard_size=max(1, n // 4)))
    return root / "shards"


def loader_rate(shards: Path, batches: int, bs: int, size: int, workers: int) -> float:
    from train_hooks.data import StreamConfig, make_loader
    from train_hooks.tokenizer import CornerTokenizer

    tok = CornerTokenizer(None, 2, 192)
    cfg = StreamConfig(batch_size=bs, subcaptions=4, image_size=size, shuffle_buffer=256)
    it = iter(make_loader(shards, tok, cfg, num_workers=workers))
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * bs / (time.perf_counter() - t0)


def webdataset_rate(shards: Path, batches: int, bs: int, size: int, workers: int) -> float:
    """Baseline: webdataset decoding the same tars with the same image transform, no captions."""
    import itertools

    import webdataset as wds
    from torch.utils.data import DataLoader

    from train_hooks.data import image_to_tensor

    mean = std = (0.5, 0.5, 0.5)
    urls = [str(p) for p in sorted(shards.glob("*.tar"))]
    ds = (
        wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False)
        .repeat()
        .to_tuple("jpg", "txt")
        .map_tuple(lambda b: image_to_tensor(b, size, mean, std), lambda t: t)
        .batched(bs)
    )
    it = iter(DataLoader(ds, batch_size=None, num_workers=workers))
    next(it)
    t0 = time.perf_counter()
    for _ in itertools.repeat(None, batches):
        next(it)
    return batches * bs / (time.perf_counter() - t0)


def step_times(ks: list[int], length: int, bs: int, rounds: int) -> dict[int, float]:
    """Fastest seconds of forward + backward + AdamW step of the tiny preset per K, full-length
    texts. Rounds interleave the K values so that load from other processes hits all alike."""
    import torch

    from train_hooks.loss import lotlip_loss
    from train_hooks.model import LoTLIP, preset

    setups = {}
    for k in ks:
        torch.manual_seed(0)
        model = LoTLIP(preset("tiny", num_corner=k))
        ids = torch.randint(1000, 30000, (bs, length))
        ids[:, 0] = 101
        ids[:, 1 : k + 1] = torch.arange(30522, 30522 + k)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        setups[k] = (model, opt, ids)
    mask = torch.ones(bs, length, dtype=torch.bool)
    px = torch.randn(bs, 3, 32, 32)
    times: dict[int, list[float]] = {k: [] for k in ks}
    for i in range(rounds + 1):
        for k, (model, opt, ids) in setups.items():
            t0 = time.perf_counter()
            img, txt, scale = model(px, ids, mask, ids, mask)
            loss, _ = lotlip_loss(img, txt, scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:  # round 0 warms up
                times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--context-length", type=int, default=192)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = build_shards(Path(tmp), args.images)
        a = (args.batches, args.batch_size, args.image_size, args.workers)
        base = webdataset_rate(shards, *a)
        ours = loader_rate(shards, *a)
    print(f"## Loader ({args.workers} workers, batch {args.batch_size}, {args.image_size}px)\n")
    print("| reader | samples/s | ratio |\n|---|---:|---:|")
    print(f"| plain webdataset (image only) | {base:.0f} | 1.00 |")
    print(
        f"| longcap ShardStream (image, k=4 sampling, tokenizing) | {ours:.0f} "
        f"| {ours / base:.2f} |"
    )
    print(
        f"\n## Training step (tiny preset, batch {args.batch_size}, "
        f"context {args.context_length})\n"
    )
    print("| K | step ms | ratio to K=0 |\n|---:|---:|---:|")
    times = step_times([0, 1, 2, 4], args.context_length, args.batch_size, args.steps)
    for k, t in times.items():
        print(f"| {k} | {t * 1000:.1f} | {t / times[0]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
