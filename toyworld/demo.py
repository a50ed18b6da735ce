"""`make demo`: the whole build on toy scenes, with no GPU and no download, then a short training
run judged on held-out scenes.

1. generate a few hundred toy scenes (`toyworld.scenes`: 2-6 shapes on a 3x3 grid, the truth
   kept as a column), a URL list of (url, alt-text, truth) with the awkward rows real lists have
   (a 404, a duplicate, an empty URL, an HTML page, a 1-pixel and a 30,000-pixel image, a
   non-UTF-8 caption), served from 127.0.0.1;
2. `longcap build`: img2dataset downloads the list into shards, each shard is recaptioned by the
   two trained tiny captioners (`toyworld/weights/llava-1.5` and `qwen2-vl`, vLLM's CPU build in
   a local Ray) as soon as it lands, assembled (cleaned, split, counted) as soon as both are done,
   and the statistics are printed, with each captioner's accuracy against the truth;
3. train a tiny corner-token model (K = 2, fill texts from both captioners, the frozen toy image
   tower: LiT, as LoTLIP) on the result and print retrieval on held-out scenes, whose long texts
   are the truth in a phrasing no captioner writes, before and after training.
This is the `lotlip` variant of the toy experiment (`longcap toy experiment`, docs/RESULTS.md)
at demo size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path


def _step(n: int, text: str) -> None:
    print(f"\n[{n}/3] {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toyworld.demo")
    parser.add_argument("--out", default="demo_out", help="folder for everything (recreated)")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()

    from toyworld.captioners import WEIGHTS
    from toyworld.experiment import (
        CAPTIONERS,
        HELDOUT_SEED,
        IMAGE_TOWER,
        QUICK,
        build_data,
        evaluate,
        untrained,
        variant_train_config,
    )
    from toyworld.heldout import make_heldout_shards

    _step(1, f"{args.images} toy scenes and a URL list (with bad rows), served from 127.0.0.1")
    for family in CAPTIONERS.values():
        held = json.loads((WEIGHTS / family / "heldout.json").read_text())
        acc = held.get("vllm") or held.get("transformers") or {}
        right, wrong = 100 * acc.get("correct", 0), 100 * acc.get("hallucinated", 0)
        print(
            f"      captioner {family}: {WEIGHTS / family} (trained by toyworld.captioners; "
            f"held-out objects right {right:.1f}%, wrong {wrong:.1f}%)"
        )
    _step(2, "longcap build: img2dataset -> recaption (2 trained captioners, vLLM CPU, local "
          "Ray) -> assemble -> statistics")  # fmt: skip
    shards = build_data(out, args.images, args.seed, WEIGHTS, bad_rows=True)

    _step(3, "training a tiny corner-token model; retrieval on held-out scenes before and after")
    from train_hooks.evaluate import load_checkpoint
    from train_hooks.train import train

    heldout = make_heldout_shards(out / "heldout", args.heldout, HELDOUT_SEED + args.seed)
    before = untrained(heldout, args.seed, IMAGE_TOWER)
    scale = replace(QUICK, steps=args.train_steps)
    cfg = variant_train_config("lotlip", shards, out / "train_run", scale, args.seed)
    print(
        f"      longcap train --shards {shards} --out {cfg.out} --corner-tokens 2 "
        f"--vision-weights {IMAGE_TOWER} --lock-image --steps {cfg.steps} "
        f"--batch-size {cfg.batch_size} --lr {cfg.lr:g}",
        flush=True,
    )
    train(cfg)
    model, tok, _ = load_checkpoint(cfg.out)
    after = evaluate(model, tok, heldout)
    print(f"      held-out scenes: {args.heldout} (long text: the truth, phrased as no captioner)")
    print("      | R@1 (%)    | before | after |")
    for key, name in (
        ("long_i2t_r1", "long i2t"),
        ("long_t2i_r1", "long t2i"),
        ("short_i2t_r1", "short i2t"),
        ("short_t2i_r1", "short t2i"),
    ):
        print(f"      | {name:<10} | {before[key]:6.1f} | {after[key]:5.1f} |")
    (out / "heldout_retrieval.json").write_text(
        json.dumps({"before": before, "after": after}, indent=1) + "\n"
    )
    print(f"\ndone in {time.perf_counter() - t0:.0f}s. Everything is under {out}/:")
    for name, what in (
        ("urls.csv", "the URL list (with its bad rows)"),
        ("build.yaml", "the build config"),
        ("build/ingest", "img2dataset's shards and the checked URL list"),
        ("build/recaption", "captions/<model>/NNNNN.parquet and recaption_report.json"),
        ("build/shards", "the dataset: NNNNN.parquet, NNNNN_stats.json (with truth)"),
        ("build/stats", "stats.json (with caption accuracy) and histograms"),
        ("heldout/shards", "held-out scenes with truth texts"),
        ("train_run", "training run (log.jsonl, checkpoints/)"),
        ("heldout_retrieval.json", "retrieval before and after training"),
    ):
        print(f"  {out / name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
