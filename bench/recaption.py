"""Benchmark: the recaption pipeline's steady-state images/s against bare `vllm.LLM.generate`.

Same tiny model, same images (2,400 by default, in img2dataset-style shards of 200), same engine
settings and sampling, one command:
  1. bare: one process loads `vllm.LLM`, decodes every image up front (untimed), then calls
     `generate` once per shard's worth of images; steady state = images after the first call
     over the time they took;
  2. pipeline: `pipeline.recaption.run` on a local Ray: decode tasks, one engine actor, atomic
     Parquet output per unit; steady state = images of the units finished after the first
     unit, over the time between the first and the last unit finishing.
The two alternate `--repeat` times (3); the median of the paired ratios is the figure.
Run: .venv/bin/python bench/recaption.py [--images 2400] [--shard 200] [--max-tokens 64]

With `--openai`, the same command instead pairs bare vLLM with the openai engine
(`recaption.engine_openai.OpenAIEngine`, `--openai-concurrency` requests in flight) against
`vllm serve` of the same tiny model on 127.0.0.1 (`toyworld.vllm_server`, same engine settings,
started once, its start-up untimed): the same pre-decoded images, one `generate` per shard,
steady state after the first shard; the ratio is openai over bare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_inputs(root: Path, images: int, shard: int) -> Path:
    import io
    import random

    from PIL import Image, ImageDraw

    from tests.shards.helpers import write_i2d_shard

    inp = root / "in"
    if (inp / "done").exists():
        return inp
    rng = random.Random(0)
    for s in range(images // shard):
        ok = []
        for i in range(shard):
            im = Image.new("RGB", (96, 96), tuple(rng.randrange(256) for _ in range(3)))
            d = ImageDraw.Draw(im)
            d.ellipse([rng.randrange(40), rng.randrange(40), 60, 90], fill=(200, 40, 40))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            ok.append({"key": f"{s:05d}{i:04d}", "url": "", "caption": "x", "jpg": buf.getvalue()})
        write_i2d_shard(inp, f"{s:05d}", ok, [])
    (inp / "done").touch()
    return inp


def bare(model: str, inp: str, max_tokens: int) -> None:
    """Child process: bare vLLM on pre-decoded images; prints one JSON line."""
    from pipeline.recaption_config import ModelConfig
    from recaption.engine import CaptionEngine
    from recaption.units import decode_shard
    from shards.readers import shard_names

    cfg = ModelConfig(name="bare", family="llava-1.5", path=model, max_tokens=max_tokens)
    engine = CaptionEngine(cfg)  # the same LLM(...) arguments and sampling as the actors
    size = engine.family.image_size
    shards = [decode_shard(inp, n, size) for n in shard_names(Path(inp))]
    times = []
    for d in shards:
        t0 = time.perf_counter()
        engine.generate(d.keys, d.images)
        times.append(time.perf_counter() - t0)
    steady = sum(len(d.keys) for d in shards[1:]) / sum(times[1:])
    print(json.dumps({"steady_images_per_s": steady, "load_s": engine.load_seconds}))


def openai_rate(base_url: str, model: str, inp: str, max_tokens: int, concurrency: int) -> float:
    """Steady-state images/s of the openai engine on pre-decoded images, one call per shard."""
    from pipeline.recaption_config import ModelConfig
    from recaption.engine_openai import OpenAIEngine
    from recaption.units import decode_shard
    from shards.readers import shard_names

    cfg = ModelConfig(
        name="openai", family="llava-1.5", path=model, served_model="tiny", engine="openai",
        base_url=base_url, max_tokens=max_tokens, concurrency=concurrency,
    )  # fmt: skip
    engine = OpenAIEngine(cfg)
    shards = [decode_shard(inp, n, engine.family.image_size) for n in shard_names(Path(inp))]
    times = []
    for d in shards:
        t0 = time.perf_counter()
        engine.generate(d.keys, d.images)
        times.append(time.perf_counter() - t0)
    engine.close()
    return sum(len(d.keys) for d in shards[1:]) / sum(times[1:])


def openai_vs_bare(work: Path, model: str, inp: Path, child: list[str], env, args) -> None:
    """`--openai`: bare vLLM and the openai engine against `vllm serve`, alternating."""
    import signal

    from toyworld.vllm_server import VLLMServer

    # A SIGTERM (a `timeout`) still stops the server: it runs in its own process group.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    with VLLMServer(model, work / "vllm_serve.log", served_model="tiny") as server:
        up = server.wait_ready()
        for _ in range(args.repeat):
            out = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
            bare_rate = json.loads(out.stdout.strip().splitlines()[-1])["steady_images_per_s"]
            api = openai_rate(
                server.base_url, model, str(inp), args.max_tokens, args.openai_concurrency
            )
            rows.append((bare_rate, api))
            print(f"pair {len(rows)}: bare {bare_rate:.2f}, openai {api:.2f} images/s", flush=True)
    print(f"{args.images} images in shards of {args.shard}, 96 px JPEG, tiny LLaVA-1.5, ")
    print(f"max_tokens {args.max_tokens}; machine {platform.machine()}, {os.cpu_count()} cores")
    print(f"vllm serve up in {up:.0f}s (untimed); openai concurrency {args.openai_concurrency}")
    print()
    print(
        "| pair | bare `vllm.LLM.generate` images/s | openai engine (vllm serve) images/s | ratio |"
    )
    print("|---|---:|---:|---:|")
    ratios = []
    for i, (b, a) in enumerate(rows, 1):
        ratios.append(a / b)
        print(f"| {i} | {b:.1f} | {a:.1f} | {a / b:.2f} |")
    ratios.sort()
    print(f"\nmedian ratio {ratios[len(ratios) // 2]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2400)
    parser.add_argument("--shard", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--work", default="/tmp/longcap_bench_recaption")
    parser.add_argument("--repeat", type=int, default=3, help="bare/pipeline pairs")
    parser.add_argument("--bare-child", nargs=2, metavar=("MODEL", "INPUT"))
    parser.add_argument(
        "--openai", action="store_true", help="bare vLLM vs the openai engine on vllm serve"
    )
    parser.add_argument("--openai-concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.bare_child:
        bare(*args.bare_child, args.max_tokens)
        return
    import yaml

    from toyworld.tiny_models import make_tiny_models

    work = Path(args.work)
    models = work / "models"
    if not (models / "llava-1.5" / "config.json").exists():
        make_tiny_models(models, families=("llava-1.5",))
    inp = make_inputs(work, args.images, args.shard)
    model = str(models / "llava-1.5")

    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    child = [sys.executable, __file__, "--bare-child", model, str(inp)]
    child += ["--max-tokens", str(args.max_tokens)]
    if args.openai:
        openai_vs_bare(work, model, inp, child, env, args)
        return
    cfg_path = work / "run.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "input": str(inp),
                "output": str(work / "out"),
                "progress": False,
                "models": [
                    {
                        "name": "llava",
                        "family": "llava-1.5",
                        "path": model,
                        "max_tokens": args.max_tokens,
                        # Ray sets OMP_NUM_THREADS to an actor's CPUs: give the engine the
                        # cores the bare process uses.
                        "cpus_per_replica": os.cpu_count() or 1,
                    }
                ],
            }
        )
    )
    import shutil

    import ray

    from pipeline.recaption import run
    from pipeline.recaption_config import load_config

    # Alternate bare and pipeline runs: on a shared 2-core machine the load drifts over minutes,
    # and pairing the runs keeps the drift out of the ratio.
    rows = []
    for _ in range(args.repeat):
        out = subprocess.run(child, env=env, capture_output=True, text=True, check=True).stdout
        bare_rate = json.loads(out.strip().splitlines()[-1])["steady_images_per_s"]
        shutil.rmtree(work / "out", ignore_errors=True)
        report = run(load_config(cfg_path))
        ray.shutdown()
        m = report["models"]["llava"]
        rows.append((bare_rate, m["steady_images_per_s"], report["wall_seconds"]))
    print(f"{args.images} images in shards of {args.shard}, 96 px JPEG, tiny LLaVA-1.5, ")
    print(f"max_tokens {args.max_tokens}; machine {platform.machine()}, {os.cpu_count()} cores")
    print()
    print("| pair | bare `vllm.LLM.generate` images/s | longcap recaption images/s | ratio |")
    print("|---|---:|---:|---:|")
    ratios = []
    for i, (b, p, _) in enumerate(rows, 1):
        ratios.append(p / b)
        print(f"| {i} | {b:.1f} | {p:.1f} | {p / b:.2f} |")
    ratios.sort()
    print(
        f"\nmedian ratio {ratios[len(ratios) // 2]:.2f}; pipeline job wall time "
        f"{rows[-1][2]:.1f}s incl. Ray start and engine load"
    )


if __name__ == "__main__":
    main()
