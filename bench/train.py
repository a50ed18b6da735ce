"""Benchmark of the trainer: the shard loader against a plain webdataset read of the same tars;
tokens per long text for each text mode (fill against the old k = 4 windows); a training step
with K corner tokens against K = 0, and with T = 2 long texts against T = 1.

Run: `.venv/bin/python bench/train.py` (a few minutes on 2 cores). Prints markdown tables;
record them in docs/BENCHMARKS.md with the machine. Targets: K <= 4 within 5% of K = 0; fill
uses >= 90% of the token budget at context 192 on demo-like shards (three captioners per image,
as DreamLIP's and LoTLIP's released caption files have).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


CAPTIONERS = ("llava", "qwen", "sharegpt4v")


def build_shards(root: Path, n: int, captioners: int = 2, size: int = 256) -> Path:
    from shards.assemble import AssembleConfig, assemble
    from toyworld.sample_data import make_sample

    models = CAPTIONERS[:captioners]
    manifest = make_sample(root / "sample", n=n, seed=0, size=size, bad_rows=False, models=models)
    assemble(manifest, root / "shards", AssembleConfig(shard_size=max(1, n // 4)))
    return root / "shards"


def text_tokens(shards: Path, context: int, num_corner: int = 2) -> list[dict]:
    """Per text mode and source: mean tokens a long text takes (pieces + [SEP]s, the shards'
    own counts), as a share of the budget (context - [CLS] - K) and of what the sample's
    captions hold, and the share of texts the tokenizer has to cut."""
    import random

    from train_hooks.data import list_shards, read_shard
    from train_hooks.sampling import MODES, TextSpec, training_texts, usable_captions
    from train_hooks.tokenizer import CornerTokenizer

    tok = CornerTokenizer(None, num_corner, context)
    recs = [r for s in list_shards(shards) for r in read_shard(s)]
    rows = []
    for mode, m in (("fill", 1), ("k", 1), ("dreamlip", 3)):
        for source in MODES:
            spec = TextSpec(mode=mode, source=source, budget=tok.budget, k=4, m=m)
            used = avail = cut = 0
            for r in recs:
                (text,) = training_texts(r["long_captions"], spec, random.Random(r["key"]))
                n = sum(tok.count(text)) + len(text)
                used += min(n, tok.budget)
                cut += n > tok.budget
                pool = usable_captions(r["long_captions"])
                sizes = [sum(c["subcaption_tokens"]) + len(c["subcaptions"]) for c in pool]
                # What the text could hold: one caption (picked uniformly, so on average the
                # mean caption) or all of them, at most the budget.
                if source == "one_model":
                    avail += sum(min(tok.budget, x) for x in sizes) / len(sizes)
                else:
                    avail += min(tok.budget, sum(sizes))
            label = f"{mode} (m={m})" if mode == "dreamlip" else mode if mode == "fill" else "k=4"
            rows.append(
                {
                    "mode": label,
                    "source": source,
                    "tokens": used / len(recs),
                    "budget": used / len(recs) / tok.budget,
                    "available": used / avail,
                    "cut": cut / len(recs),
                }
            )
    return rows


def loader_rate(shards: Path, batches: int, bs: int, size: int, workers: int) -> float:
    from train_hooks.data import StreamConfig, make_loader
    from train_hooks.tokenizer import CornerTokenizer

    tok = CornerTokenizer(None, 2, 192)
    cfg = StreamConfig(batch_size=bs, image_size=size, shuffle_buffer=256)
    it = iter(make_loader(shards, tok, cfg, num_workers=workers))
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * bs / (time.perf_counter() - t0)


def webdataset_rate(shards: Path, batches: int, bs: int, size: int, workers: int) -> float:
    """Baseline: webdataset decoding the same tars with the same image transform, no captions."""
    import itertools

    import webdataset as wds
    from torch.utils.data import DataLoader

    from train_hooks.data import image_to_tensor

    mean = std = (0.5, 0.5, 0.5)
    urls = [str(p) for p in sorted(shards.glob("*.tar"))]
    ds = (
        wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False)
        .repeat()
        .to_tuple("jpg", "txt")
        .map_tuple(lambda b: image_to_tensor(b, size, mean, std), lambda t: t)
        .batched(bs)
    )
    it = iter(DataLoader(ds, batch_size=None, num_workers=workers))
    next(it)
    t0 = time.perf_counter()
    for _ in itertools.repeat(None, batches):
        next(it)
    return batches * bs / (time.perf_counter() - t0)


def _setup_steps(k: int, t: int, length: int, bs: int):
    import torch

    from train_hooks.loss import LoTLIPLoss
    from train_hooks.model import LoTLIP, preset

    torch.manual_seed(0)
    model = LoTLIP(preset("tiny", num_corner=k))
    ids = torch.randint(1000, 30000, (t, bs, length))
    ids[..., 0] = 101
    ids[..., 1 : k + 1] = torch.arange(30522, 30522 + k)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, opt, ids, LoTLIPLoss()


def step_times(cases: list[tuple[int, int]], length: int, bs: int, rounds: int) -> dict:
    """Fastest seconds of forward + backward + AdamW step of the tiny preset per (K, T),
    full-length texts, one short text. Rounds interleave the cases so that load from other
    processes hits all alike."""
    import torch

    setups = {c: _setup_steps(*c, length, bs) for c in cases}
    short = torch.randint(1000, 30000, (1, bs, length))
    mask = torch.ones(1, bs, length, dtype=torch.bool)
    px = torch.randn(bs, 3, 32, 32)
    times: dict[tuple[int, int], list[float]] = {c: [] for c in cases}
    for i in range(rounds + 1):
        for c, (model, opt, ids, objective) in setups.items():
            t0 = time.perf_counter()
            out = model(px, short, mask, ids, mask.expand(ids.shape[0], -1, -1))
            loss = objective(**out)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:  # round 0 warms up
                times[c].append(time.perf_counter() - t0)
    return {c: min(v) for c, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--context-length", type=int, default=192)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--captioners", type=int, default=3, choices=[1, 2, 3])
    ap.add_argument("--skip-loader", action="store_true", help="only texts and step times")
    ap.add_argument(
        "--shards",
        type=Path,
        help="measure texts and loader on these shards (e.g. demo_out/build/shards from `make "
        "demo`) instead of generated ones",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        size = 64 if args.skip_loader else 256
        if args.shards:
            from train_hooks.data import list_shards

            shards = args.shards
            args.images = sum(s.count for s in list_shards(shards))
            args.captioners = "all"
        else:
            shards = build_shards(Path(tmp), args.images, args.captioners, size)
        if not args.skip_loader:
            a = (args.batches, args.batch_size, args.image_size, args.workers)
            base = webdataset_rate(shards, *a)
            ours = loader_rate(shards, *a)
        texts = text_tokens(shards, args.context_length)
    if not args.skip_loader:
        print(f"## Loader ({args.workers} workers, batch {args.batch_size}, {args.image_size}px)\n")
        print("| reader | samples/s | ratio |\n|---|---:|---:|")
        print(f"| plain webdataset (image only) | {base:.0f} | 1.00 |")
        print(
            f"| longcap ShardStream (image, fill texts, tokenizing) | {ours:.0f} "
            f"| {ours / base:.2f} |"
        )
    budget = args.context_length - 1 - 2
    print(
        f"\n## Tokens per long text ({args.images} images, {args.captioners} captioners each, "
        f"context {args.context_length}, K=2: budget {budget})\n"
    )
    print("| mode | source | tokens | of budget | of available | cut |")
    print("|---|---|---:|---:|---:|---:|")
    for r in texts:
        print(
            f"| {r['mode']} | {r['source']} | {r['tokens']:.1f} | {100 * r['budget']:.1f}% "
            f"| {100 * r['available']:.1f}% | {100 * r['cut']:.1f}% |"
        )
    print(
        f"\n## Training step (tiny preset, batch {args.batch_size}, "
        f"context {args.context_length})\n"
    )
    cases = [(0, 1), (1, 1), (2, 1), (4, 1), (2, 2)]
    times = step_times(cases, args.context_length, args.batch_size, args.steps)
    print("| K | long texts T | step ms | ratio |\n|---:|---:|---:|---:|")
    for (k, t), sec in times.items():
        base_case = (0, 1) if t == 1 else (k, 1)
        print(f"| {k} | {t} | {sec * 1000:.1f} | {sec / times[base_case]:.3f} |")
    print("\n(ratio: to K=0 for T=1 rows; to T=1 at the same K for the T=2 row)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
