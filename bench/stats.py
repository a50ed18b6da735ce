"""Benchmark: `longcap stats` on 1M samples against a naive pandas full read of the same shards.

Synthetic shards (Parquet with ~1 KB incompressible image bytes per sample, two models, 5-12
sub-captions per long caption) are written once under --data and reused. Timed in one process:
  1. naive: pandas.read_parquet of every shard (images included), then the figures with pandas;
  2. longcap stats from Parquet metadata columns (the fallback when stats files are missing);
  3. longcap stats from the per-shard `_stats.json` files (the normal path).
The figures of all three are checked equal before the times are printed.
Run: .venv/bin/python bench/stats.py [--samples 1000000] [--data /tmp/longcap_bench_stats]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards import schema as S
from shards.stats import ShardStats

SHARD = 10_000


def _make_shard(path: Path, index: int, rng: np.random.Generator) -> None:
    n = SHARD
    rows_tokens = rng.integers(40, 320, size=(n, 2))
    rows_subs = rng.integers(5, 13, size=(n, 2))
    failed = rng.random(n) < 0.02
    st = ShardStats()
    rows = []
    for i in range(n):
        key = f"{index:05d}{i:05d}"
        if failed[i]:
            sample = S.Sample(key=key, status=S.FAIL_DOWNLOAD, error="HTTP 404")
        else:
            longs = [
                S.LongCaption(
                    model=m,
                    text="x",
                    tokens=int(rows_tokens[i, j]),
                    subcaptions=["s."] * int(rows_subs[i, j]),
                    subcaption_tokens=[2] * int(rows_subs[i, j]),
                )
                for j, m in enumerate(("llava", "qwen"))
            ]
            sample = S.Sample(
                key=key,
                source="cc3m" if i % 2 else "yfcc",
                caption="a short alt text",
                caption_tokens=int(rng.integers(3, 30)),
                caption_subcaptions=1,
                long_captions=longs,
                image=rng.bytes(1024),
                image_format="jpeg",
                width=256,
                height=256,
            )
        st.add(sample)
        rows.append(sample.to_row())
    pq.write_table(pa.Table.from_pylist(rows, schema=S.output_schema()), path, compression="zstd")
    stats = {"shard": path.stem, **st.to_json()}
    path.with_name(path.stem + "_stats.json").write_text(json.dumps(stats))


def make_data(root: Path, samples: int) -> None:
    marker = root / f"complete_{samples}"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(samples // SHARD):
        _make_shard(root / f"{index:05d}.parquet", index, rng)
    marker.touch()


def naive_figures(root: Path) -> dict:
    import pandas as pd

    df = pd.concat([pd.read_parquet(p) for p in sorted(root.glob("*.parquet"))])
    ok = df[df["status"] == "ok"]
    longs = ok["long_captions"].explode().dropna()
    tokens = longs.map(lambda lc: lc["tokens"])
    subs = longs.map(lambda lc: len(lc["subcaptions"]))
    return {
        "images": int(len(ok)),
        "texts": int(len(longs)),
        "subcaptions_per_text": float(subs.mean()),
        "tokens_per_text": float(tokens.mean()),
        "p90": int(np.percentile(tokens, 90, method="inverted_cdf")),
    }


def _ours(root: Path, hide_stats: bool) -> dict:
    from shards.dataset_stats import collect_stats

    moved = []
    if hide_stats:
        for p in root.glob("*_stats.json"):
            p.rename(p.with_suffix(".hidden"))
            moved.append(p)
    try:
        r = collect_stats(root).report()
    finally:
        for p in moved:
            p.with_suffix(".hidden").rename(p)
    return {
        "images": r["images"],
        "texts": r["texts"],
        "subcaptions_per_text": r["subcaptions_per_text"],
        "tokens_per_text": r["tokens_per_text"],
        "p90": r["tokens_percentiles"]["p90"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--data", default="/tmp/longcap_bench_stats")
    args = parser.parse_args()
    root = Path(args.data)
    t0 = time.perf_counter()
    make_data(root, args.samples)
    print(f"data: {root} ({args.samples:,} samples), ready in {time.perf_counter() - t0:.0f}s")
    import logging

    logging.disable(logging.WARNING)  # the fallback warns once per shard
    timings = {}
    results = {}
    for name, fn in (
        ("naive pandas full read", lambda: naive_figures(root)),
        ("longcap stats, Parquet metadata columns", lambda: _ours(root, hide_stats=True)),
        ("longcap stats, per-shard _stats.json", lambda: _ours(root, hide_stats=False)),
    ):
        t0 = time.perf_counter()
        results[name] = fn()
        timings[name] = time.perf_counter() - t0
    first = next(iter(results.values()))
    for name, res in results.items():
        for k, v in first.items():
            assert abs(res[k] - v) < 1e-9, (name, k, res[k], v)
    size = sum(p.stat().st_size for p in root.glob("*.parquet")) / 1e9
    base = timings["naive pandas full read"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; shards {size:.2f} GB on disk")
    print(f"figures (all equal): {first}")
    print()
    print("| method | seconds | speed-up vs naive |")
    print("|---|---:|---:|")
    for name, t in timings.items():
        print(f"| {name} | {t:.2f} | {base / t:.1f}x |")


if __name__ == "__main__":
    random.seed(0)
    main()
