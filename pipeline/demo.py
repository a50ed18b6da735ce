"""`make demo`: the whole build on a generated sample, with no GPU and no download.

1. generate a few hundred images with captions, a URL list pointing at them (with the awkward
   rows real lists have: a 404, a duplicate, an empty URL, an HTML page, a 1-pixel and a
   30,000-pixel image, a non-UTF-8 caption), and serve them from 127.0.0.1;
2. create two tiny random VLMs (`longcap tiny-models`);
3. `longcap build`: img2dataset downloads the list into shards, each shard is recaptioned by both
   models on vLLM's CPU build in a local Ray as soon as it lands, assembled (cleaned, split,
   counted) as soon as both models are done, and the statistics are printed and saved;
4. train a tiny corner-token model on the result and print retrieval R@1 before and after.
The tiny models' weights are random, so their captions are gibberish: they prove the machinery,
not caption quality. Training uses the URL list's own long captions (columns `longLLA_captions`,
`longIB_captions`, `longSV_captions`, read as models `llava-1.5`, `instructblip`, `sharegpt4v`, as
in DreamLIP's released lists), which describe the images; their fill texts take about 90% of the
192-token context.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

LIST_MODELS = ["llava-1.5", "instructblip", "sharegpt4v"]


def write_build_config(path: Path, url_list: Path, output: Path, models: dict[str, Path]) -> Path:
    import yaml

    # Paths in a config are relative to the config file: write them absolute.
    cfg = {
        "output": str(output.resolve()),
        "ingest": {
            "url_list": str(url_list.resolve()),
            "image_size": 128,
            "number_sample_per_shard": 100,
            "threads": 8,
            # The demo's server is on 127.0.0.1, which the URL policy refuses unless listed.
            "allowed_networks": ["127.0.0.1/32"],
        },
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
        "assemble": {"formats": ["parquet", "tar"]},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _step(n: int, text: str) -> None:
    print(f"\n[{n}/4] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo")
    parser.add_argument("--out", default="demo_out", help="folder for everything (recreated)")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=600)
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()

    from pipeline.build import main as build
    from pipeline.loopback import make_url_list, serve
    from recaption.tiny_models import make_tiny_models

    _step(1, f"generating {args.images} images and a URL list, served from 127.0.0.1")
    (out / "www").mkdir()
    with serve(out / "www") as base_url:
        url_list = make_url_list(out, base_url, n=args.images)
        print(f"      {url_list} -> {base_url}/")

        _step(2, "creating two tiny VLMs (random weights)")
        models = make_tiny_models(out / "models")
        for family, path in models.items():
            print(f"      {family}: {path}")

        _step(3, "longcap build: img2dataset -> recaption (2 models, vLLM CPU, local Ray) "
              "-> assemble -> statistics")  # fmt: skip
        config = write_build_config(out / "build.yaml", url_list, out / "build", models)
        print(f"      config: {config}", flush=True)
        rc = build(["--config", str(config)])
    if rc:
        return rc

    _step(4, "training a tiny corner-token model (retrieval R@1 before and after)")
    from train_hooks.demo import run_demo_training

    run_demo_training(
        out / "build" / "shards", out / "train_run", steps=args.train_steps, models=LIST_MODELS
    )
    print(f"\ndone in {time.perf_counter() - t0:.0f}s. Everything is under {out}/:")
    for name, what in (
        ("urls.csv", "the URL list (with its bad rows)"),
        ("build.yaml", "the build config"),
        ("build/ingest", "img2dataset's shards and the checked URL list"),
        ("build/recaption", "captions/<model>/NNNNN.parquet and recaption_report.json"),
        ("build/shards", "the dataset: NNNNN.parquet, NNNNN.tar, NNNNN_stats.json"),
        ("build/stats", "stats.json and histograms"),
        ("train_run", "training run (log.jsonl, checkpoints/)"),
    ):
        print(f"  {out / name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
