"""Benchmark: what the ingest checks of issue 10 cost, against the unchecked path.

Three measurements, each against its baseline in this one process:

1. the list check: `prepare_url_list` on a generated CSV URL list (mostly good URLs with host
   names, some refused ones: file:, ftp:, literal private and loopback addresses), with the
   policy's pre-check (`precheck_url`) and with it replaced by a no-op (the code before issue
   10 did no URL check). Also `precheck_url` alone, in URLs per second.
2. the fetch: `pipeline.url_policy.fetch` (address checked, connection pinned, size capped,
   deadline timer) against `urllib.request.urlopen` (what img2dataset calls), both getting the
   same small image from an HTTP server on 127.0.0.1, one request at a time.

3. the manifest path check: `read_input` on a JSONL manifest with each image path resolved and
   checked against the manifest's folder, against `allow_paths_outside=True` (no check).

Nothing leaves the machine: names in the list are only parsed, never resolved; the fetch goes
to 127.0.0.1 only.

Run: .venv/bin/python bench/ingest.py [--rows 200000] [--fetches 500] [--manifest-rows 100000]
     [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout without `pip install -e`

import pipeline.ingest as ingest  # noqa: E402
from pipeline.url_policy import UrlPolicy, fetch, precheck_url  # noqa: E402
from toyworld.loopback import serve  # noqa: E402


def make_list(path: Path, n: int, seed: int = 0) -> list[str]:
    """A CSV URL list shaped like CC3M/LAION ones: 95% https URLs on many host names."""
    rng = random.Random(seed)
    bad = [
        "file:///etc/passwd",
        "ftp://files.example.com/a.jpg",
        "http://10.0.0.7/a.jpg",
        "http://127.0.0.1:8080/a.jpg",
        "http://[::1]/a.jpg",
    ]
    urls = []
    for i in range(n):
        if rng.random() < 0.05:
            urls.append(rng.choice(bad) + f"?{i}")
        else:
            host = f"img{rng.randrange(5000)}.cdn{rng.randrange(50)}.example.com"
            urls.append(f"https://{host}/photos/{i:08d}/{rng.randrange(1 << 30):x}.jpg?w=800")
    lines = ["url,caption"] + [
        f'{u},"a caption for row {i}, with a comma"' for i, u in enumerate(urls)
    ]
    path.write_text("\n".join(lines) + "\n")
    return urls


def time_prepare(cfg: ingest.IngestConfig, work: Path, repeat: int) -> float:
    best = float("inf")
    for r in range(repeat):
        t0 = time.perf_counter()
        ingest.prepare_url_list(cfg, work / f"run{r}")
        best = min(best, time.perf_counter() - t0)
    return best


def bench_list(rows: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        urls = make_list(tmp / "urls.csv", rows)
        cfg = ingest.IngestConfig(url_list=str(tmp / "urls.csv"))
        checked = time_prepare(cfg, tmp / "checked", repeat)
        real = ingest.precheck_url
        ingest.precheck_url = lambda url, policy: None  # the unchecked path
        try:
            unchecked = time_prepare(cfg, tmp / "unchecked", repeat)
        finally:
            ingest.precheck_url = real
        policy = UrlPolicy()
        t0 = time.perf_counter()
        for u in urls:
            try:
                precheck_url(u, policy)
            except Exception:  # noqa: BLE001 - refusals are part of the measured work
                pass
        alone = time.perf_counter() - t0
    print(f"list check, {rows:,} rows (best of {repeat}):")
    print(
        f"  prepare_url_list without the pre-check: {unchecked:.2f} s ({rows / unchecked:,.0f}/s)"
    )
    print(f"  prepare_url_list with the pre-check:    {checked:.2f} s ({rows / checked:,.0f}/s)")
    print(f"  ratio checked / unchecked: {checked / unchecked:.2f}x")
    print(f"  precheck_url alone: {rows / alone:,.0f} URLs/s ({alone / rows * 1e6:.1f} us/URL)")


def bench_fetch(n: int, repeat: int) -> None:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        Image.new("RGB", (256, 192), (90, 120, 200)).save(Path(tmp) / "a.jpg", quality=90)
        size = (Path(tmp) / "a.jpg").stat().st_size
        policy = UrlPolicy.from_config(["127.0.0.1/32"], 32 << 20, 60, 10)
        with serve(tmp) as base:
            url = f"{base}/a.jpg"

            def plain() -> None:
                with urllib.request.urlopen(url, timeout=10) as r:
                    r.read()

            def checked() -> None:
                fetch(url, policy)

            results = {}
            for name, fn in (("urllib.request.urlopen", plain), ("url_policy.fetch", checked)):
                best = float("inf")
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    for _ in range(n):
                        fn()
                    best = min(best, time.perf_counter() - t0)
                results[name] = best
    base_t = results["urllib.request.urlopen"]
    print(f"fetch, {n} requests of a {size:,}-byte JPEG from 127.0.0.1, one at a time")
    for name, t in results.items():
        print(f"  {name}: {n / t:,.0f} requests/s ({t / n * 1e3:.2f} ms each), {t / base_t:.2f}x")


def bench_manifest(rows: int, repeat: int) -> None:
    """Reading a JSONL manifest with the path check (each image path resolved and kept inside
    the manifest's folder) against `allow_paths_outside=True` (no check, as before issue 10)."""
    import json

    from shards.readers import read_input

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "img" / "a").mkdir(parents=True)
        for i in range(1000):
            (root / "img" / "a" / f"{i:06d}.jpg").write_bytes(b"")
        with open(root / "m.jsonl", "w") as f:
            for i in range(rows):
                rec = {"key": f"k{i}", "image_path": f"img/a/{i % 1000:06d}.jpg", "caption": "c."}
                f.write(json.dumps(rec) + "\n")
        results = {}
        for name, allow in (("unchecked", True), ("checked", False)):
            best = float("inf")
            for _ in range(repeat):
                t0 = time.perf_counter()
                n = sum(1 for _ in read_input(root / "m.jsonl", allow_paths_outside=allow))
                best = min(best, time.perf_counter() - t0)
            assert n == rows
            results[name] = best
    print(f"manifest read, {rows:,} rows (best of {repeat}):")
    for name, t in results.items():
        print(f"  paths {name}: {rows / t:,.0f} rows/s, {t / results['unchecked']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--fetches", type=int, default=500)
    parser.add_argument("--manifest-rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    print(f"{platform.machine()}, Python {platform.python_version()}, pinned to one core")
    bench_list(args.rows, args.repeat)
    bench_fetch(args.fetches, args.repeat)
    bench_manifest(args.manifest_rows, args.repeat)


if __name__ == "__main__":
    main()
