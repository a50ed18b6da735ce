"""The `longcap` command line: argument parsing only; the work lives in the packages."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def _cmd_shards(args: argparse.Namespace) -> int:
    from shards.assemble import AssembleConfig, assemble

    cfg = AssembleConfig(
        shard_size=args.shard_size,
        max_shard_bytes=int(args.max_shard_mb * (1 << 20)),
        formats=args.formats.split(","),
        parquet_images=not args.no_parquet_images,
        tokenizer=args.tokenizer,
        verify_images=not args.no_verify_images,
        captions=args.captions,
        split_engine=args.split_engine,
        allow_paths_outside=args.allow_paths_outside,
    )
    print(f"longcap shards: {args.input} -> {args.out} (formats {','.join(cfg.formats)})")
    t0 = time.perf_counter()
    res = assemble(args.input, args.out, cfg, force_rebuild=args.force_rebuild)
    dt = time.perf_counter() - t0
    if res.shards_skipped:
        print(f"resumed: {res.shards_skipped} shards were already complete and kept")
    print(
        f"wrote {len(res.shards_written)} shards: {res.samples_in:,} samples, "
        f"{res.samples_ok:,} ok, {res.samples_failed:,} failed, in {dt:.1f}s"
    )
    print(f"statistics: longcap stats {args.out}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from shards.dataset_stats import add_caption_accuracy, collect_stats, format_report, write_plots

    stats = collect_stats(args.dir, args.split_engine)
    report = add_caption_accuracy(stats.report(), args.dir)
    if args.split_engine:
        report["split_engine"] = args.split_engine
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
    if args.plots:
        for path in write_plots(stats, args.plots):
            print(f"plot: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _cmd_recaption(args: argparse.Namespace) -> int:
    from pipeline.recaption import main as recaption_main

    extra = ["--executor", args.executor] if args.executor else []
    return recaption_main(
        ["--config", args.config] + ["--force-rebuild"] * args.force_rebuild + extra
    )


def _cmd_build(args: argparse.Namespace) -> int:
    from pipeline.build import main as build_main

    extra = ["--executor", args.executor] if args.executor else []
    return build_main(["--config", args.config] + ["--force-rebuild"] * args.force_rebuild + extra)


def _cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.plan import PlanError, format_plan, replan, run_plan, write_plan

    if args.measured:
        if args.config or args.sample:
            raise PlanError("--measured reuses an earlier measurement: drop --config and --sample")
        plan = replan(
            args.measured,
            target_images=args.target_images,
            gpus=args.gpus,
            gpu_hour_price=args.gpu_hour_price,
            engine_rates=args.engine_rate,
        )
        print(format_plan(plan))
        print(f"plan: {write_plan(plan, args.out)}")
        return 0
    if not args.config or args.sample is None:
        raise PlanError("pass --config and --sample (or --measured PLAN_JSON)")
    plan = run_plan(
        args.config,
        sample=args.sample,
        target_images=args.target_images,
        gpus=args.gpus,
        gpu_hour_price=args.gpu_hour_price,
        engine_rates=args.engine_rate,
        seed=args.seed,
        keep_work=args.keep_work,
    )
    print(format_plan(plan))
    print(f"plan: {write_plan(plan, args.out)}")
    return 0


def _cmd_tiny_models(args: argparse.Namespace) -> int:
    from toyworld.tiny_models import make_tiny_models

    made = make_tiny_models(args.dir, seed=args.seed)
    for family, path in made.items():
        print(f"{family}: {path}")
    return 0


def _cmd_convert_sharegpt4v(args: argparse.Namespace) -> int:
    from recaption.convert_sharegpt4v import convert_sharegpt4v

    rep = convert_sharegpt4v(args.src, args.dst, vision_tower=args.vision_tower)
    print(
        f"converted {args.src} + vision tower {rep.vision_tower} -> {rep.out}: "
        f"{rep.llm_tensors} LLM + {rep.tower_tensors} tower tensors, {rep.written_tensors} "
        f"written, {rep.verified_not_copied} derived buffers checked; added {rep.added_tokens} "
        f"(<image> = {rep.image_token_index}, vocabulary {rep.vocab_size}); "
        f"pad to square: {rep.pad_to_square}"
    )
    print(f"use it with `family: sharegpt4v` and `path: {rep.out}`")
    return 0


def _cmd_toy(args: argparse.Namespace) -> int:
    # The toy world is not a product path: imported only when this command runs.
    from toyworld.experiment import main as toy_main

    return toy_main(args.toy_args)


def build_parser() -> argparse.ArgumentParser:
    from shards.split import ENGINES  # light: re, nltk's punkt module

    parser = argparse.ArgumentParser(
        prog="longcap",
        description="Build long-caption image-text datasets (LoTLIP-style) and train on them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "shards",
        help="assemble output shards from a manifest, img2dataset output or longcap shards",
    )
    p.add_argument("--input", required=True, help="manifest (.jsonl/.csv/.tsv/.parquet) or folder")
    p.add_argument("--out", required=True, help="output folder (a rerun resumes)")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per shard")
    p.add_argument("--max-shard-mb", type=float, default=1024, help="image MB per shard")
    p.add_argument("--formats", default="parquet,tar", help="parquet,tar or one of them")
    p.add_argument("--no-parquet-images", action="store_true", help="images only in the tar")
    p.add_argument("--no-verify-images", action="store_true", help="read headers only")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: BERT uncased)")
    p.add_argument(
        "--captions",
        default=None,
        help="recaption OUTPUT folder: join captions/<model>/NNNNN.parquet to the input shards",
    )
    p.add_argument(
        "--split-engine",
        default="rules",
        choices=ENGINES,
        help="sub-caption splitter: rules (default), punkt (nltk) or regex (LoTLIP's re.split)",
    )
    p.add_argument(
        "--force-rebuild",
        action="store_true",
        help="delete finished shards made from another config or input, and rebuild them "
        "(without it such a rerun stops, exit 2)",
    )
    p.add_argument(
        "--allow-paths-outside",
        action="store_true",
        help="read a manifest's image paths that lie outside its folder (absolute, ../, links "
        "out); by default such rows are failures (path_outside_root), see docs/SECURITY.md",
    )
    p.set_defaults(func=_cmd_shards)

    p = sub.add_parser(
        "recaption", help="recaption input shards with MLLMs (vLLM in Ray actors, or in-process)"
    )
    p.add_argument("--config", required=True, help="run.yaml (see README)")
    p.add_argument(
        "--force-rebuild",
        action="store_true",
        help="redo finished outputs made from another config or input (without it such a "
        "rerun stops, exit 2)",
    )
    p.add_argument(
        "--executor",
        choices=["ray", "local"],
        help="Ray actors (default), or threads of this process without Ray (overrides the "
        "config's `executor`)",
    )
    p.set_defaults(func=_cmd_recaption)

    p = sub.add_parser("build", help="URL list -> img2dataset -> recaption -> shards -> stats")
    p.add_argument("--config", required=True, help="build.yaml (see README)")
    p.add_argument(
        "--force-rebuild",
        action="store_true",
        help="redo finished outputs made from another config or input (without it such a "
        "rerun stops, exit 2)",
    )
    p.add_argument(
        "--executor",
        choices=["ray", "local"],
        help="Ray actors (default), or threads of this process without Ray (overrides the "
        "config's `executor`)",
    )
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser(
        "plan",
        help="measure the configured models on N of your images and predict GPU-hours, wall "
        "time, CPU cores, storage and cost of the full run (docs/SCALING.md)",
    )
    p.add_argument("--config", help="run.yaml (recaption) or build.yaml")
    p.add_argument("--sample", type=int, metavar="N", help="images to measure on")
    p.add_argument(
        "--measured",
        metavar="PLAN_JSON",
        help="predict again from an earlier plan.json's measurements (no --config, no engines)",
    )
    p.add_argument(
        "--target-images", type=int, required=True, metavar="M", help="images of the full run"
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="G",
        help="GPUs of the cluster (default: the config's replicas x gpus_per_replica)",
    )
    p.add_argument("--gpu-hour-price", type=float, default=None, metavar="P", help="per GPU-hour")
    p.add_argument(
        "--engine-rate",
        action="append",
        default=[],
        metavar="NAME=IMG_PER_S",
        help="images/s of one replica of model NAME measured on a GPU (or assumed), used "
        "instead of the rate measured here; repeat per model",
    )
    p.add_argument("--seed", type=int, default=0, help="which shards the sample comes from")
    p.add_argument("--out", default="plan.json", help="where to write the plan (JSON)")
    p.add_argument(
        "--keep-work",
        metavar="DIR",
        default=None,
        help="keep the sample shard, its captions and its dataset shard in DIR (empty or new)",
    )
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("tiny-models", help="create tiny random VLMs for CPU runs and tests")
    p.add_argument("dir", help="folder; one subfolder per family (llava-1.5, qwen2-vl, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_tiny_models)

    p = sub.add_parser(
        "convert-sharegpt4v",
        help="turn ShareGPT4V's released checkpoint (+ its vision tower) into a llava-hf "
        "checkpoint vLLM loads (family sharegpt4v)",
    )
    p.add_argument("src", help="the released folder (config.json: Share4VLlamaForCausalLM)")
    p.add_argument("dst", help="new output folder")
    p.add_argument(
        "--vision-tower",
        metavar="DIR",
        help="the fine-tuned CLIP tower folder (default: config.json's mm_vision_tower when it "
        "is a folder, or the local Hugging Face cache; nothing is downloaded)",
    )
    p.set_defaults(func=_cmd_convert_sharegpt4v)

    p = sub.add_parser(
        "toy",
        help="the toy world's experiment: longcap toy experiment --seed S --out DIR [--quick]; "
        "longcap toy summarize DIR... (see docs/RESULTS.md)",
        add_help=False,
    )
    p.add_argument("toy_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_toy)

    p = sub.add_parser("stats", help="LoTLIP Table 1 statistics of a built dataset")
    p.add_argument("dir", help="folder of longcap shards")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plots", metavar="DIR", help="write PNG histograms to DIR")
    p.add_argument(
        "--split-engine",
        default=None,
        choices=ENGINES,
        help="recount sub-captions by re-splitting the stored texts (read from the shards' "
        "Parquet, no images) with this engine; regex gives LoTLIP Table 1's counts",
    )
    p.set_defaults(func=_cmd_stats)

    from pipeline.cli_train import add_train_commands

    add_train_commands(sub)
    from pipeline.submit import add_submit_command

    add_submit_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from shards.inputs import InputError

    # Exit codes (README): 0 finished (failed rows are data), 1 finished with failed units,
    # 2 usage or config error, 3 crash.
    try:
        return args.func(args)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"longcap {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception:
        import traceback

        traceback.print_exc()
        print(f"longcap {args.command}: crashed (exit 3); finished work is kept", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
