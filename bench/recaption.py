"""Benchmark: the recaption pipeline's steady-state images/s against bare `vllm.LLM.generate`.

Same tiny model, same images (2,400 by default, in img2dataset-style shards of 200), same engine
settings and sampling, one command:
  1. bare: one process loads `vllm.LLM`, decodes every image up front (untimed), then calls
     `generate` once per shard's worth of images; steady state = images after the first call
     over the time they took;
  2. pipeline: `pipeline.recaption.run` on a local Ray: decode tasks, one engine actor, atomic
     Parquet output per unit; steady state = images of the units finished after the first
     unit, over the time between the first and the last unit finishing.
  3. transformers: one process loads the `transformers` engine (recaption.engine_hf) on the same
     checkpoint and the same pre-decoded images, `--hf-batch` images per `generate` call (one
     padded batch each), same max_tokens and temperature; steady state as for bare.
The three alternate `--repeat` times (3); the medians of the paired ratios (pipeline / bare,
transformers / bare) are the figures. Mean generated tokens per image are printed beside the
images/s: the engines sample differently, so their captions can differ in length.
Run: .venv/bin/python bench/recaption.py [--images 2400] [--shard 200] [--max-tokens 64]
     [--hf-batch 16]

`--memory` (issue 12) measures instead the peak object-store bytes of a recaption job on a local
Ray for input shards of 200 and of 2,000 images (336 px; a stand-in engine slower than decoding,
so decode-ahead is always full), sampled every 50 ms from Ray's state API; images move in chunks
(`chunk_images`, default 100), so the two peaks should be within 1.2x. `--memory-whole` adds
the same runs with one chunk per shard, as the job moved images before chunks.
Run: .venv/bin/python bench/recaption.py --memory [--memory-whole]

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
    _time_engine(engine, shards, len(shards[0].keys))


def _time_engine(engine, shards, batch: int) -> None:
    """Caption every shard, `batch` images per engine call; print one JSON line: steady-state
    images/s (every shard after the first), mean generated tokens per image, load time."""
    times, tokens = [], []
    for d in shards:
        t0 = time.perf_counter()
        for i in range(0, len(d.keys), batch):
            gens = engine.generate(d.keys[i : i + batch], d.images[i : i + batch])
            tokens += [g.generated_tokens for g in gens]
        times.append(time.perf_counter() - t0)
    steady = sum(len(d.keys) for d in shards[1:]) / sum(times[1:])
    out = {"steady_images_per_s": steady, "tokens_per_image": sum(tokens) / len(tokens)}
    print(json.dumps({**out, "load_s": engine.load_seconds}))


def hf(model: str, inp: str, max_tokens: int, batch: int) -> None:
    """Child process: the transformers engine on pre-decoded images; prints one JSON line."""
    from pipeline.recaption_config import ModelConfig
    from recaption.engine_hf import TransformersEngine
    from recaption.units import decode_shard
    from shards.readers import shard_names

    cfg = ModelConfig(
        name="hf", family="llava-1.5", path=model, max_tokens=max_tokens, engine="transformers"
    )
    engine = TransformersEngine(cfg)
    size = engine.family.image_size
    _time_engine(engine, [decode_shard(inp, n, size) for n in shard_names(Path(inp))], batch)


def _peak_store_bytes(stop, out: list[int]) -> None:
    """Sample the cluster's object-store bytes in use until `stop` is set; keep the peak."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    while not stop.is_set():
        used = get_memory_info_reply(state).store_stats.object_store_bytes_used
        out[0] = max(out[0], used)
        stop.wait(0.05)


def memory_mode(work: Path, whole: bool) -> None:
    """Peak object-store bytes for 200- and 2,000-image shards (see the module docstring)."""
    import io
    import random
    import shutil
    import threading

    import ray
    import yaml
    from PIL import Image, ImageDraw

    from pipeline.recaption import init_ray, run
    from pipeline.recaption_config import load_config
    from tests.shards.helpers import write_i2d_shard

    work.mkdir(parents=True, exist_ok=True)
    model = work / "stub-model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"architectures": ["LlavaForConditionalGeneration"]}')
    rng = random.Random(0)
    pool = []
    for _ in range(2000):  # 336 px: the size LLaVA-1.5 takes, so decoding does not shrink them
        im = Image.new("RGB", (336, 336), tuple(rng.randrange(256) for _ in range(3)))
        ImageDraw.Draw(im).ellipse(
            [rng.randrange(100), rng.randrange(100), 300, 320], fill=(200, 40, 40)
        )
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        pool.append(buf.getvalue())
    layouts = {200: 6, 2000: 2}  # images per shard: shards
    rows = []
    for per_shard, n_shards in layouts.items():
        inp = work / f"in{per_shard}"
        if not (inp / "done").exists():
            for s in range(n_shards):
                ok = [
                    {"key": f"{s:05d}{i:04d}", "url": "", "caption": "x", "jpg": pool[i]}
                    for i in range(per_shard)
                ]
                write_i2d_shard(inp, f"{s:05d}", ok, [])
            (inp / "done").touch()
        for label, chunk in [("chunks", None)] + ([("whole shard", 1 << 30)] if whole else []):
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            cfg = {
                "input": str(inp),
                "output": str(out),
                "progress": False,
                "models": [
                    {
                        "name": "stub",
                        "family": "llava-1.5",
                        "path": str(model),
                        "engine": "tests.recaption.stub_engine:HangingEngine",
                        # Slower than decoding (1 s per call of 100 images): the engine is the
                        # bottleneck, as on a GPU, and every decode-ahead buffer stays full.
                        "engine_kwargs": {"delay_s": 1.0},
                        "batch_size": 100,
                    }
                ],
            }
            if chunk is not None:
                cfg["chunk_images"] = chunk
            (work / "run.yaml").write_text(yaml.safe_dump(cfg))
            job = load_config(work / "run.yaml")
            init_ray(job)
            stop, peak = threading.Event(), [0]
            sampler = threading.Thread(target=_peak_store_bytes, args=(stop, peak))
            sampler.start()
            try:
                report = run(job)
            finally:
                stop.set()
                sampler.join()
                ray.shutdown()
            assert report["complete"], report
            rows.append((per_shard, label, job.chunk_images, peak[0], report["wall_seconds"]))
    print("| images per shard | images move as | chunk_images | peak object store | job wall |")
    print("|---:|---|---:|---:|---:|")
    for per_shard, label, chunk, peak, wall in rows:
        shown = "(shard)" if chunk >= 1 << 30 else chunk
        print(f"| {per_shard} | {label} | {shown} | {peak / 2**20:.0f} MiB | {wall:.0f} s |")
    chunked = {r[0]: r[3] for r in rows if r[1] == "chunks"}
    print(f"\npeak(2000) / peak(200) with chunks: {chunked[2000] / chunked[200]:.2f} (limit 1.2)")


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
    parser.add_argument("--hf-batch", type=int, default=16, help="transformers images per call")
    parser.add_argument("--bare-child", nargs=2, metavar=("MODEL", "INPUT"))
    parser.add_argument("--hf-child", nargs=2, metavar=("MODEL", "INPUT"))
    parser.add_argument("--memory", action="store_true", help="peak object-store bytes mode")
    parser.add_argument("--memory-whole", action="store_true", help="also one chunk per shard")
    parser.add_argument(
        "--openai", action="store_true", help="bare vLLM vs the openai engine on vllm serve"
    )
    parser.add_argument("--openai-concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.memory:
        memory_mode(Path(args.work) / "memory", args.memory_whole)
        return
    if args.bare_child:
        bare(*args.bare_child, args.max_tokens)
        return
    if args.hf_child:
        hf(*args.hf_child, args.max_tokens, args.hf_batch)
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
    hf_child = [sys.executable, __file__, "--hf-child", model, str(inp)]
    hf_child += ["--max-tokens", str(args.max_tokens), "--hf-batch", str(args.hf_batch)]
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
    rows, hf_rows = [], []
    for _ in range(args.repeat):
        out = subprocess.run(child, env=env, capture_output=True, text=True, check=True).stdout
        bare_out = json.loads(out.strip().splitlines()[-1])
        bare_rate = bare_out["steady_images_per_s"]
        shutil.rmtree(work / "out", ignore_errors=True)
        report = run(load_config(cfg_path))
        ray.shutdown()
        m = report["models"]["llava"]
        rows.append((bare_rate, m["steady_images_per_s"], report["wall_seconds"]))
        out = subprocess.run(hf_child, env=env, capture_output=True, text=True, check=True).stdout
        hf_rows.append((bare_out, json.loads(out.strip().splitlines()[-1])))
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
    print(f"\ntransformers engine, {args.hf_batch} images per generate call:\n")
    print(
        "| pair | bare `vllm.LLM.generate` images/s (tokens/image) "
        "| transformers engine images/s (tokens/image) | ratio |"
    )
    print("|---|---:|---:|---:|")
    hf_ratios = []
    for i, (b, h) in enumerate(hf_rows, 1):
        b_rate, h_rate = b["steady_images_per_s"], h["steady_images_per_s"]
        hf_ratios.append(h_rate / b_rate)
        print(
            f"| {i} | {b_rate:.1f} ({b['tokens_per_image']:.1f}) "
            f"| {h_rate:.1f} ({h['tokens_per_image']:.1f}) | {h_rate / b_rate:.2f} |"
        )
    hf_ratios.sort()
    print(f"\nmedian ratio transformers / bare vLLM {hf_ratios[len(hf_ratios) // 2]:.2f}")


if __name__ == "__main__":
    main()
