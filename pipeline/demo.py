"""`make demo`: the main job end to end on a generated sample, with no GPU and no download.

1. generate images with captions (a raw alt text and two pretend captioners' long captions);
2. assemble them into input shards (`longcap shards`);
3. create two tiny random VLMs (`longcap tiny-models`) and recaption every shard with both at
   once on a local Ray with vLLM's CPU build (`longcap recaption`);
4. assemble the final shards with every model's captions split and counted
   (`longcap shards --captions`), print LoTLIP's Table 1 statistics and write histograms;
5. train a tiny corner-token model and print retrieval R@1 before and after.
The tiny models' weights are random, so their captions are gibberish: they prove the machinery,
not caption quality. Training uses the pretend captioners' texts, which describe the images.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from pipeline.cli import main as longcap
from pipeline.sample_data import make_sample

PRETEND_MODELS = ["llava", "qwen"]


def _step(n: int, text: str) -> None:
    print(f"\n[{n}/5] {text}", flush=True)


def write_run_config(path: Path, input_dir: Path, output: Path, models: dict[str, Path]) -> Path:
    import yaml

    # Paths in a config are relative to the config file: write them absolute.
    cfg = {
        "input": str(input_dir.resolve()),
        "output": str(output.resolve()),
        "models": [
            {
                "name": "tiny-llava",
                "family": "llava-1.5",
                "path": str(models["llava-1.5"].resolve()),
                "prompts": ["Describe the image in detail.", "What is in this picture?"],
                "max_tokens": 48,
            },
            {
                "name": "tiny-qwen",
                "family": "qwen2-vl",
                "path": str(models["qwen2-vl"].resolve()),
                "prompts": ["Describe this image in detail."],
                "max_tokens": 48,
            },
        ],
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo")
    parser.add_argument("--out", default="demo_out", help="folder for everything (recreated)")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=200)
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()

    _step(1, f"generating {args.images} images with captions (plus 3 broken rows)")
    manifest = make_sample(out / "sample", n=args.images)
    print(f"      manifest: {manifest}")

    _step(2, "input shards")
    rc = longcap(["shards", "--input", str(manifest), "--out", str(out / "input"),
                  "--shard-size", "100"])  # fmt: skip
    if rc:
        return rc

    _step(3, "recaptioning with two tiny VLMs on vLLM (CPU) in a local Ray")
    from recaption.tiny_models import make_tiny_models

    models = make_tiny_models(out / "models")
    config = write_run_config(out / "run.yaml", out / "input", out / "recaption", models)
    print(f"      config: {config}")
    rc = longcap(["recaption", "--config", str(config)])
    if rc:
        return rc

    _step(4, "final shards with every model's captions, and their statistics")
    rc = longcap(["shards", "--input", str(out / "input"), "--captions", str(out / "recaption"),
                  "--out", str(out / "shards"), "--shard-size", "100"])  # fmt: skip
    if rc:
        return rc
    rc = longcap(["stats", str(out / "shards"), "--plots", str(out / "plots")])
    if rc:
        return rc

    _step(5, "training a tiny corner-token model (retrieval R@1 before and after)")
    from train_hooks.demo import run_demo_training

    run_demo_training(
        out / "shards", out / "train_run", steps=args.train_steps, models=PRETEND_MODELS
    )
    print(f"\ndone in {time.perf_counter() - t0:.0f}s. Everything is under {out}/:")
    for name, what in (
        ("input", "input shards"),
        ("recaption", "captions/<model>/NNNNN.parquet and recaption_report.json"),
        ("shards", "final shards (NNNNN.parquet, NNNNN.tar, NNNNN_stats.json)"),
        ("plots", "histograms"),
        ("train_run", "training run (log.jsonl, checkpoints/)"),
    ):
        print(f"  {out / name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
