"""Benchmark: reading dataset shards from S3 (moto's server on 127.0.0.1) against local files.

Shards are built once with `longcap shards` from the toy world's generated sample (96 px JPEGs,
two pretend models' long captions), to a local folder and to a bucket on a moto server that this
script starts on a free loopback port (and stops). Timed in one process, each read `--reps`
times, best kept:
  1. the trainer's reader (`train_hooks.data.read_shard`), every record of every shard, from the
     tars and from the Parquet files;
  2. `longcap stats` (`collect_stats`) of the folder.
The write (`longcap shards` to each place, after one untimed warm-up build) is timed once.
The records and the figures are checked equal before the times are printed, with the ratio
S3 / local. moto is a Python server on the same machine: the figure is the cost of the
storage layer and the HTTP round trips, not of a real network or of S3 itself.
Run: .venv/bin/python bench/s3_read.py [--images 2000] [--shard-size 250] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.s3_server import _free_port, make_bucket, s3_test_env, start_moto  # noqa: E402


def _best(fn, reps: int):
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=250)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="longcap_bench_s3_"))
    port = _free_port()
    moto = start_moto(port, tmp / "moto.log")
    try:
        (tmp / "empty").write_text("")
        os.environ.update(s3_test_env(f"http://127.0.0.1:{port}", str(tmp / "empty")))
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        make_bucket(f"http://127.0.0.1:{port}", bucket)

        from shards.assemble import AssembleConfig, assemble
        from shards.dataset_stats import collect_stats
        from toyworld.sample_data import make_sample
        from train_hooks.data import list_shards, read_shard

        manifest = make_sample(tmp / "sample", n=args.images, size=96, seed=0, bad_rows=False)
        cfg = AssembleConfig(shard_size=args.shard_size)
        local, remote = tmp / "shards", f"s3://{bucket}/shards"
        assemble(manifest, local, cfg)  # warm-up: imports, tokenizer, page cache
        t_remote, _ = _best(lambda: assemble(manifest, remote, cfg, force_rebuild=True), 1)
        shutil.rmtree(local)
        t_local, _ = _best(lambda: assemble(manifest, local, cfg), 1)
        size = sum(p.stat().st_size for p in local.iterdir() if p.is_file()) / 1e6
        n_shards = len(list_shards(local))
        print(
            f"{args.images} images, {n_shards} shards, {size:.1f} MB; machine: "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.1f}"
        )
        print(f"write (longcap shards): local {t_local:.2f} s, s3 {t_remote:.2f} s, "
              f"ratio {t_remote / t_local:.2f}x")  # fmt: skip

        def records(folder, fmt):
            return lambda: [r["key"] for s in list_shards(folder) for r in read_shard(s, fmt)]

        rows = []
        for fmt in ("tar", "parquet"):
            a_t, a = _best(records(local, fmt), args.reps)
            b_t, b = _best(records(remote, fmt), args.reps)
            assert a == b and len(a) == args.images, (len(a), len(b))
            rows.append((f"trainer reader, {fmt}", a_t, b_t, len(a)))
        a_t, a = _best(lambda: collect_stats(local).report(), args.reps)
        b_t, b = _best(lambda: collect_stats(remote).report(), args.reps)
        assert a == b
        rows.append(("longcap stats (from _stats.json)", a_t, b_t, a["samples"]))
        print("| read | local s | S3 (moto, loopback) s | S3 / local | samples/s from S3 |")
        print("|---|---:|---:|---:|---:|")
        for name, a_t, b_t, n in rows:
            print(f"| {name} | {a_t:.3f} | {b_t:.3f} | {b_t / a_t:.2f}x | {n / b_t:,.0f} |")
    finally:
        moto.terminate()
        try:
            moto.wait(timeout=30)
        except subprocess.TimeoutExpired:
            moto.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
