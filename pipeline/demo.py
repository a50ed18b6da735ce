"""`make demo`: the main job end to end on a generated sample, with no GPU and no download.

Generate images with captions, assemble shards (clean, split, count BERT tokens, write
Parquet + webdataset tar), print LoTLIP's Table 1 statistics and write histograms, then train a
tiny corner-token model on the shards and print retrieval R@1 before and after.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pipeline.cli import main as longcap
from pipeline.sample_data import make_sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.demo")
    parser.add_argument("--out", default="demo_out", help="folder for everything (recreated)")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    print(f"[1/4] generating {args.images} images with captions from two pretend models")
    manifest = make_sample(out / "sample", n=args.images)
    print(f"      manifest: {manifest}")
    print("[2/4] assembling shards")
    rc = longcap(
        ["shards", "--input", str(manifest), "--out", str(out / "shards"), "--shard-size", "100"]
    )
    if rc:
        return rc
    print("[3/4] statistics")
    rc = longcap(["stats", str(out / "shards"), "--plots", str(out / "plots")])
    if rc:
        return rc
    print("[4/4] training a tiny corner-token model (retrieval R@1 before and after)")
    from train_hooks.demo import run_demo_training

    run_demo_training(out / "shards", out / "train_run")
    print(f"\nshards: {out / 'shards'}   plots: {out / 'plots'}   run: {out / 'train_run'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
