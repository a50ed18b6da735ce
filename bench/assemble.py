"""Benchmark: `longcap shards` (assembly) before and after the durability and fingerprint work of
issue 10 (fsync of data files and folder before the completion mark, fingerprints, pax tars,
header-checked images, capped tar members, the output lock), timed in one command.

A sample manifest (`toyworld.sample_data.make_sample`: JPEGs, two pretend models) is written once
under --data. Each repetition assembles it, in turn, with:
  1. before: the code of an earlier tree (--before DIR, e.g. `git archive 4d6b4d0 | tar -x -C
     DIR`), in a child process, so both versions run on the same disk in the same minute;
  2. after: this tree;
  3. after without fsync: this tree with `os.fsync` made a no-op, to show what durability costs
     on this disk apart from the other changes.
Each run writes a fresh output folder. Reported per code: the best (minimum) wall time of the
repetitions, which is the least disturbed by other load on a shared machine, its ratio to
"before", the median wall time, and the median CPU time (user + system) of the run's process.
Run from the repository root:
  .venv/bin/python bench/assemble.py --before /tmp/longcap_before [--images 4000] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _time_assembly(src: Path, manifest: Path, out: Path, shard_size: int, no_fsync: bool) -> float:
    """Seconds of one `assemble` with the code under `src` (imported first on sys.path)."""
    sys.path.insert(0, str(src))
    if no_fsync:
        os.fsync = lambda fd: None
    from shards.assemble import AssembleConfig, assemble

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    assemble(manifest, out, AssembleConfig(shard_size=shard_size))
    return time.perf_counter() - t0


def _child(
    src: Path, manifest: Path, out: Path, shard_size: int, no_fsync: bool
) -> tuple[float, float]:
    """(wall, CPU) seconds of one run in a fresh process: each version imports only its own
    modules."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        str(src),
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--shard-size",
        str(shard_size),
    ] + (["--no-fsync"] if no_fsync else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd="/", check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return float(res.stdout.strip().splitlines()[-1]), cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="a tree of the earlier code")
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path("/tmp/longcap_bench_assemble"))
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--no-fsync", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        secs = _time_assembly(args.worker, args.manifest, args.out, args.shard_size, args.no_fsync)
        print(secs)
        return

    sys.path.insert(0, str(HERE))
    from toyworld.sample_data import make_sample

    manifest = args.data / "sample" / "manifest.jsonl"
    if not manifest.exists():
        make_sample(args.data / "sample", n=args.images, size=96, seed=0)
    n_rows = sum(1 for _ in manifest.open())
    modes = {"after": (HERE, False), "after, no fsync": (HERE, True)}
    if args.before:
        modes = {"before": (args.before, False), **modes}
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for _ in range(args.reps):
        for mode, (src, no_fsync) in modes.items():
            out = args.data / "out"
            times[mode].append(_child(src, manifest, out, args.shard_size, no_fsync))
    shutil.rmtree(args.data / "out", ignore_errors=True)
    base = min(w for w, _ in times["before"]) if args.before else None
    print(
        f"assembly of {n_rows:,} rows ({args.images:,} 96 px JPEGs, 2 models) in shards of "
        f"{args.shard_size:,}; {args.reps} repetitions; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(
        "| code | best wall s | rows/s | vs before | median wall s | median CPU s |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    for mode, ts in times.items():
        best = min(w for w, _ in ts)
        ratio = f"{best / base:.3f}x" if base else "-"
        wall = statistics.median(w for w, _ in ts)
        cpu = statistics.median(c for _, c in ts)
        print(f"| {mode} | {best:.2f} | {n_rows / best:,.0f} | {ratio} | {wall:.2f} | {cpu:.2f} |")
    print(json.dumps({m: [[round(w, 3), round(c, 3)] for w, c in ts] for m, ts in times.items()}))


if __name__ == "__main__":
    main()
