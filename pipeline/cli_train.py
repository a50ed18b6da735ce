"""`longcap train` and `longcap eval`: argument parsing for the bundled corner-token trainer.

`add_train_commands(sub)` registers both on the `longcap` subparsers; the work (and the torch
import) lives in train_hooks, loaded only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def _cmd_train(args: argparse.Namespace) -> int:
    from train_hooks.train import TrainConfig, train

    if args.subcaptions is not None and args.text_mode != "k":
        raise SystemExit(
            f"longcap train: --subcaptions applies to --text-mode k; --text-mode "
            f"{args.text_mode} decides how many sub-captions a text holds (drop --subcaptions "
            "or add --text-mode k)"
        )
    if args.dreamlip_off_by_one and args.text_mode != "dreamlip":
        raise SystemExit("longcap train: --dreamlip-off-by-one needs --text-mode dreamlip")
    cfg = TrainConfig(
        shards=args.shards,
        out=args.out,
        preset=args.preset,
        corner_tokens=args.corner_tokens,
        text_mode=args.text_mode,
        subcaptions=args.subcaptions if args.subcaptions is not None else 4,
        window=args.window,
        mode=args.mode,
        long_texts=args.long_texts,
        mllm_short_texts=args.mllm_short_texts,
        dreamlip_off_by_one=args.dreamlip_off_by_one,
        models=args.models.split(",") if args.models else None,
        context_length=args.context_length,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        lock_image=args.lock_image,
        loss_weights=args.loss_weights,
        seed=args.seed,
        num_workers=args.workers,
        shard_format=args.format,
        text_weights=args.text_weights,
        vision_weights=args.vision_weights,
        vocab=args.vocab,
        save_every=args.save_every,
        progress=not args.no_progress,
    )
    texts = {
        "fill": "texts filling the context",
        "dreamlip": f"DreamLIP texts of {cfg.window} sub-captions",
        "k": f"k={cfg.subcaptions} windows of {cfg.window}",
    }[cfg.text_mode]
    print(
        f"longcap train: {args.shards} -> {args.out} (preset {args.preset}, "
        f"K={args.corner_tokens} corner tokens, {cfg.long_texts} long text(s): {texts}, "
        f"context {args.context_length}, {args.steps} steps x batch {args.batch_size})"
    )
    res = train(cfg, resume=args.resume)
    if res["world"] == 1 or int(__import__("os").environ.get("RANK", "0")) == 0:
        print(f"done: {res['steps']} steps, last loss {res['loss']:.4f}")
        print(f"checkpoint: {res['checkpoint']}\nlog: {res['log']}")
        print(f"evaluate: longcap eval --checkpoint {args.out} --shards HELD_OUT_SHARDS")
    return 0


def _pairs(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--bench-root {item!r}: expected NAME=DIR, e.g. dci=/data/dci")
        out[name] = path
    return out


def _cmd_eval(args: argparse.Namespace) -> int:
    from train_hooks.evaluate import evaluate_retrieval, format_results, load_checkpoint, zero_shot

    if not (args.shards or args.benchmark or args.zeroshot):
        raise SystemExit("longcap eval: give --shards DIR, --benchmark NAME or --zeroshot DIR")
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
    p = sub.add_parser("train", help="train LoTLIP's corner-token model on built shards")
    p.add_argument("--shards", required=True, help="folder of longcap shards (longcap shards)")
    p.add_argument("--out", required=True, help="run folder: config, log.jsonl, checkpoints/")
    p.add_argument("--preset", default="tiny", choices=["tiny", "base"])
    p.add_argument("--corner-tokens", type=int, default=2, help="K corner tokens")
    p.add_argument(
        "--text-mode",
        default="fill",
        choices=["fill", "dreamlip", "k"],
        help="long texts: fill the context (default), DreamLIP's loader, or k windows",
    )
    p.add_argument(
        "--subcaptions", type=int, default=None, help="k windows per long text (--text-mode k; 4)"
    )
    p.add_argument("--window", type=int, default=1, help="m consecutive sub-captions per window")
    p.add_argument(
        "--mode",
        default="across_models",
        choices=["across_models", "one_model"],
        help="windows from every model's caption (default: what fills the context), or from "
        "one model's caption per text",
    )
    p.add_argument(
        "--long-texts",
        type=int,
        default=1,
        help="T long texts per image, each [CLS] + K corners in the loss (dreamlip: num_text); "
        "0 trains on the short captions only (the short-caption baseline; needs "
        "--corner-tokens 0)",
    )
    p.add_argument(
        "--mllm-short-texts",
        type=int,
        default=0,
        metavar="N",
        help="N extra short texts per image from the MLLMs' short captions",
    )
    p.add_argument(
        "--dreamlip-off-by-one",
        action="store_true",
        help="dreamlip mode: DreamLIP's start range, which never reaches the last sub-caption",
    )
    p.add_argument("--models", help="only these models' long captions, comma-separated")
    p.add_argument("--context-length", type=int, default=192)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=None, help="steps (default 10%%)")
    p.add_argument(
        "--lock-image",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="freeze the image trunk (LiT); default: the preset's choice",
    )
    p.add_argument("--loss-weights", type=_floats, default=None, help="e.g. 1,1,1,1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--format", default="auto", choices=["auto", "tar", "parquet"])
    p.add_argument("--text-weights", help="local bert-base-uncased folder")
    p.add_argument("--vision-weights", help="local ViT folder")
    p.add_argument("--vocab", help="vocab.txt or folder (default: bundled BERT uncased)")
    p.add_argument("--save-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
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
