"""`longcap train` and `longcap eval`: argument parsing for the bundled corner-token trainer.

`add_train_commands(sub)` registers both on the `longcap` subparsers; the work (and the torch
import) lives in train_hooks, loaded only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from pipeline.config_loader import field_default


def _train_fields() -> frozenset[str]:
    from train_hooks.config import TrainConfig

    return frozenset(f.name for f in dataclasses.fields(TrainConfig))


_TRAIN_FIELDS = _train_fields()


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def train_config_from_args(args: argparse.Namespace):
    """The TrainConfig of `longcap train`: --config's file with the flags given laid over it.
    Only the flags given are in `args` (argparse default SUPPRESS); what neither sets takes
    TrainConfig's default."""
    from train_hooks.config import load_train_config

    overrides = {k: v for k, v in vars(args).items() if k in _TRAIN_FIELDS}
    return load_train_config(args.config, overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = train_config_from_args(args)
    from train_hooks.train import train

    texts = {
        "fill": "texts filling the context",
        "dreamlip": f"DreamLIP texts of {cfg.window} sub-captions",
        "k": f"k={cfg.subcaptions} windows of {cfg.window}",
    }[cfg.text_mode]
    print(
        f"longcap train: {cfg.shards} -> {cfg.out} (preset {cfg.preset}, "
        f"K={cfg.corner_tokens} corner tokens, {cfg.long_texts} long text(s): {texts}, "
        f"context {cfg.context_length}, {cfg.steps} steps x batch {cfg.batch_size})"
    )
    res = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if res["world"] == 1 or int(__import__("os").environ.get("RANK", "0")) == 0:
        print(f"done: {res['steps']} steps, last loss {res['loss']:.4f}")
        print(f"checkpoint: {res['checkpoint']}\nlog: {res['log']}")
        print(f"evaluate: longcap eval --checkpoint {cfg.out} --shards HELD_OUT_SHARDS")
    return 0


def _pairs(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--bench-root {item!r}: expected NAME=DIR, e.g. dci=/data/dci")
        out[name] = path
    return out


def _cmd_eval(args: argparse.Namespace) -> int:
    from train_hooks.evaluate import evaluate_retrieval, format_results, load_checkpoint, zero_shot

    if not (args.shards or args.benchmark or args.zeroshot):
        raise ValueError("give --shards DIR, --benchmark NAME or --zeroshot DIR")
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok, ck = load_checkpoint(args.checkpoint, device)
    print(f"longcap eval: checkpoint {ck['path']} (step {ck['step']}) on {device}")
    res: dict = {}
    if args.shards:
        models = args.models.split(",") if args.models else None
        res.update(
            evaluate_retrieval(model, tok, args.shards, args.format, models, args.max_samples)
        )
    if args.zeroshot:
        classes = Path(args.classes).read_text().split("\n") if args.classes else None
        classes = [c for c in classes if c.strip()] if classes else None
        zs = zero_shot(
            model, tok, args.zeroshot, args.label_field, classes, max_samples=args.max_samples
        )
        res.update(zs)
    if res:
        if "long_texts" in res:
            print(f"{res['images']} images, {res.get('long_texts', 0)} long texts")
        print(format_results(res))
    out: dict = dict(res)
    if args.benchmark:
        from train_hooks.benchmarks import run
        from train_hooks.benchmarks.text import clean_engine

        bench = run.run_benchmarks(
            model,
            tok,
            args.benchmark,
            args.root,
            _pairs(args.bench_root),
            args.max_samples,
            args.annotations,
            args.batch_size,
            args.workers,
        )
        print(run.format_results(bench))
        out = {
            "checkpoint": ck["path"],
            "step": ck["step"],
            "context_length": tok.context_length,
            "text_clean": clean_engine(),
            "max_samples": args.max_samples,
            "benchmarks": bench,
            **({"shards": res} if res else {}),
        }
        if args.benchmark == "long8":
            print("\nLoTLIP Table 2 (R@1, %):")
            print(run.long8_table(bench, Path(ck["path"]).name))
            out["long8"] = run.long8_figures(bench)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"results: {args.json}")
    return 0


def add_train_commands(sub) -> None:
    """Register `train` and `eval` on the `longcap` argparse subparsers object."""
    from train_hooks.config import SHARD_FORMATS, TrainConfig
    from train_hooks.sampling import MODES, TEXT_MODES

    def d(name: str) -> str:
        """` (default X)` from TrainConfig: the one place a default is written."""
        value = field_default(TrainConfig, name)
        return "" if value is None else f" (default {value})"

    p = sub.add_parser(
        "train",
        help="train LoTLIP's corner-token model on built shards",
        description="Flags override the --config file; what neither sets takes the default "
        "shown (train_hooks/config.py TrainConfig; a train.yaml uses the same field names).",
        argument_default=argparse.SUPPRESS,  # only the flags given reach the config
    )
    p.add_argument("--config", default=None, help="train.yaml: any TrainConfig fields")
    p.add_argument("--shards", help="folder of longcap shards (longcap shards)")
    p.add_argument("--out", help="run folder: config, log.jsonl, checkpoints/")
    p.add_argument("--preset", help="model preset: tiny or base" + d("preset"))
    p.add_argument(
        "--corner-tokens",
        dest="corner_tokens",
        type=int,
        help="K corner tokens" + d("corner_tokens"),
    )
    p.add_argument(
        "--text-mode",
        dest="text_mode",
        choices=TEXT_MODES,
        help="long texts: fill the context, DreamLIP's loader, or k windows" + d("text_mode"),
    )
    p.add_argument(
        "--subcaptions", type=int, help="k windows per long text (--text-mode k)" + d("subcaptions")
    )
    p.add_argument("--window", type=int, help="m consecutive sub-captions per window" + d("window"))
    p.add_argument(
        "--mode",
        choices=MODES,
        help="windows from every model's caption (what fills the context), or from "
        "one model's caption per text" + d("mode"),
    )
    p.add_argument(
        "--long-texts",
        dest="long_texts",
        type=int,
        help="T long texts per image, each [CLS] + K corners in the loss (dreamlip: num_text); "
        "0 trains on the short captions only (the short-caption baseline; needs "
        "--corner-tokens 0)" + d("long_texts"),
    )
    p.add_argument(
        "--mllm-short-texts",
        dest="mllm_short_texts",
        type=int,
        metavar="N",
        help="N extra short texts per image from the MLLMs' short captions" + d("mllm_short_texts"),
    )
    p.add_argument(
        "--dreamlip-off-by-one",
        dest="dreamlip_off_by_one",
        action="store_true",
        help="dreamlip mode: DreamLIP's start range, which never reaches the last sub-caption",
    )
    p.add_argument(
        "--models",
        type=lambda text: text.split(","),
        help="only these models' long captions, comma-separated",
    )
    p.add_argument("--context-length", dest="context_length", type=int, help=d("context_length"))
    p.add_argument("--steps", type=int, help=d("steps"))
    p.add_argument(
        "--batch-size", dest="batch_size", type=int, help="per process" + d("batch_size")
    )
    p.add_argument("--lr", type=float, help=d("lr"))
    p.add_argument("--weight-decay", dest="weight_decay", type=float, help=d("weight_decay"))
    p.add_argument("--warmup", type=int, help="steps (default 10%%, at most 1000)")
    p.add_argument(
        "--lock-image",
        dest="lock_image",
        action=argparse.BooleanOptionalAction,
        help="freeze the image trunk (LiT); default: the preset's choice",
    )
    p.add_argument("--loss-weights", dest="loss_weights", type=_floats, help="e.g. 1,1,1,1")
    p.add_argument("--seed", type=int, help=d("seed"))
    p.add_argument(
        "--workers", dest="num_workers", type=int, help="DataLoader workers" + d("num_workers")
    )
    p.add_argument("--format", dest="shard_format", choices=SHARD_FORMATS, help=d("shard_format"))
    p.add_argument("--text-weights", dest="text_weights", help="local bert-base-uncased folder")
    p.add_argument("--vision-weights", dest="vision_weights", help="local ViT folder")
    p.add_argument("--vocab", help="vocab.txt or folder (default: bundled BERT uncased)")
    p.add_argument(
        "--save-every",
        dest="save_every",
        type=int,
        help="steps between checkpoints (default: at the end)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        default=False,
        help="continue from the latest checkpoint that loads",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        default=False,
        help="replace the log and checkpoints of an earlier run in --out",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="retrieval and zero-shot of a checkpoint on held-out shards or public benchmarks",
    )
    p.add_argument("--checkpoint", required=True, help="run folder (latest checkpoint) or .pt")
    p.add_argument("--shards", help="held-out shard folder")
    p.add_argument("--format", default="auto", choices=["auto", "tar", "parquet"])
    p.add_argument("--models", help="only these models' long captions, comma-separated")
    p.add_argument("--max-samples", type=int, default=None, help="cap on samples read per set")
    p.add_argument("--zeroshot", metavar="DIR", help="labelled shard folder for zero-shot")
    p.add_argument("--label-field", default="source", help="metadata field holding the class")
    p.add_argument("--classes", help="file of class names, one a line")
    p.add_argument(
        "--benchmark",
        choices=["dci", "iiw", "sharegpt4v-1k", "sharegpt4v-10k", "urban1k", "docci", "coco"]
        + ["flickr30k", "imagenet", "long8"],
        help="a public benchmark in its released layout (docs/EVAL.md); long8: LoTLIP's "
        "Table 2 (DCI, IIW, ShareGPT4V-1k, -10k; I2T and T2I)",
    )
    p.add_argument(
        "--root",
        help="the benchmark's folder; for long8 a folder holding dci/, iiw/, sharegpt4v/",
    )
    p.add_argument(
        "--bench-root",
        action="append",
        metavar="NAME=DIR",
        help="folder of one benchmark (NAME: dci, iiw, sharegpt4v, ...), overrides --root",
    )
    p.add_argument(
        "--annotations",
        metavar="FILE",
        help="annotation file in place of the one under the root (share4v_sam_10k.json, "
        "dataset_coco.json, ...)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="image decoding threads")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    p.set_defaults(func=_cmd_eval)
