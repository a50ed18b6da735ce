"""Benchmark: `count_tokens` (batched Rust WordPiece) against a per-caption transformers call.

Both on one core, same captions (~100 BERT tokens each), same process. The baseline is what a
loader typically does: `len(tokenizer(text)["input_ids"]) - 2` caption by caption.
Run: .venv/bin/python bench/tokens.py [--n 20000]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from shards.tokens import set_single_thread

set_single_thread()  # before tokenizers starts its thread pool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    from transformers import AutoTokenizer

    from shards.tokens import count_tokens, default_vocab_path
    from toyworld.sample_data import synthetic_long_captions

    texts = synthetic_long_captions(args.n, seed=0)
    baseline_tok = AutoTokenizer.from_pretrained(str(default_vocab_path().parent))
    baseline_tok.model_max_length = 10**9  # count, never truncate
    count_tokens(texts[:10])  # load once, outside the timing

    t0 = time.perf_counter()
    ours = count_tokens(texts)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    base = [len(baseline_tok(t)["input_ids"]) - 2 for t in texts]
    t_base = time.perf_counter() - t0
    assert ours == base, "counts differ from the baseline"

    mean_tokens = sum(ours) / len(ours)
    print(f"{args.n} captions, {mean_tokens:.1f} BERT tokens each on average, one core")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print()
    print("| method | captions/s | ratio |")
    print("|---|---:|---:|")
    print(f"| per-caption `AutoTokenizer(text)` (baseline) | {args.n / t_base:,.0f} | 1.00 |")
    print(f"| `count_tokens` (batched) | {args.n / t_ours:,.0f} | {t_base / t_ours:.2f} |")


if __name__ == "__main__":
    main()
