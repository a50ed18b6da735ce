"""Benchmark: `split_caption` against the regex baseline and nltk Punkt, speed and accuracy.

All four splitters run in this one process, pinned to one core, on the same captions: ~100
BERT tokens (~430 characters) each, stitched with a seeded RNG from the sentences of the
hand-labelled set tests/shards/data/split_cases.jsonl (nothing is downloaded). Accuracy is
measured on that labelled set:

- exact: the list of sub-captions equals the labelled one, string for string;
- boundary: the pieces hold the same words (case and punctuation ignored), which scores where
  a splitter cuts and is fair to `re.split`, which drops the periods it cuts at.

`--cases FILE.jsonl` scores accuracy on another labelled set instead (same format: `text`,
`expected`, `category`), with the exact-split rate per category; `--accuracy-only` skips the
timing. The blind set of MLLM text unlike the main set (lowercase output, brands, foreign
abbreviations, URLs, emoticons, markdown) is tests/shards/data/split_cases_unlike.jsonl.

Run: .venv/bin/python bench/split.py [--n 20000] [--repeat 3] [--cases FILE] [--accuracy-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout without `pip install -e`

from nltk.tokenize.punkt import PunktSentenceTokenizer  # noqa: E402

from shards.split import lotlip_split, split_caption  # noqa: E402

CASES = ROOT / "tests" / "shards" / "data" / "split_cases.jsonl"
Splitter = Callable[[str], list[str]]


def load_rows(path: Path = CASES) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines() if x.strip()]


def load_cases(path: Path = CASES) -> list[tuple[str, list[str]]]:
    return [(r["text"], r["expected"]) for r in load_rows(path)]


def category_report(split: Splitter, rows: list[dict]) -> list[str]:
    """Exact-split rate per category, and every miss."""
    lines = []
    for cat in sorted({r.get("category", "") for r in rows}):
        sub = [r for r in rows if r.get("category", "") == cat]
        hits = sum(split(r["text"]) == r["expected"] for r in sub)
        lines.append(f"  {cat}: {hits}/{len(sub)} exact")
    for r in rows:
        got = split(r["text"])
        if got != r["expected"]:
            lines.append(f"  MISS {r['text']!r}\n    got      {got}\n    expected {r['expected']}")
    return lines


def build_corpus(cases: list[tuple[str, list[str]]], n: int, seed: int = 0) -> list[str]:
    """n captions of ~100 BERT tokens (~430 characters of these sentences): random labelled
    sentences joined until the length is reached, some with a newline inside or a trailing
    </s> as MLLM outputs have."""
    rng = random.Random(seed)
    sentences = [s for _, expected in cases for s in expected if len(s) > 20]
    corpus = []
    for _ in range(n):
        parts: list[str] = []
        size = 0
        target = rng.randint(330, 450)
        while size < target:
            s = rng.choice(sentences)
            parts.append(s)
            size += len(s) + 1
        text = " ".join(parts)
        if rng.random() < 0.1:
            text = text.replace(". ", ".\n", 1)
        if rng.random() < 0.2:
            text += "</s>"
        corpus.append(text)
    return corpus


def throughput(split: Splitter, corpus: list[str], repeat: int) -> float:
    """Captions per second, best of `repeat` passes."""
    for text in corpus[:200]:  # warm caches (lru_cache, regex cache) outside the timing
        split(text)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for text in corpus:
            split(text)
        best = min(best, time.perf_counter() - t0)
    return len(corpus) / best


def _words(pieces: list[str]) -> list[tuple[str, ...]]:
    out = [tuple(re.findall(r"[^\W_]+", p.lower())) for p in pieces]
    return [w for w in out if w]


def accuracy(split: Splitter, cases: list[tuple[str, list[str]]]) -> tuple[float, float]:
    exact = sum(split(t) == e for t, e in cases) / len(cases)
    boundary = sum(_words(split(t)) == _words(e) for t, e in cases) / len(cases)
    return exact, boundary


def mean_bert_tokens(corpus: list[str]) -> float | None:
    try:
        from shards.tokens import count_tokens

        counts = count_tokens(corpus[:2000])
    except Exception:  # the vocab package is optional here; the figure is informative only
        return None
    return sum(counts) / len(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="captions to time (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes, best kept")
    parser.add_argument("--cases", type=Path, default=CASES, help="labelled set for accuracy")
    parser.add_argument("--accuracy-only", action="store_true", help="skip the timing")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    cases = load_cases(args.cases)
    corpus = build_corpus(load_cases(), args.n)  # timing always on the main set's sentences
    untrained = PunktSentenceTokenizer()
    splitters: dict[str, Splitter] = {
        "`re.split(r'\\n\\|</s>\\|[.]')` (LoTLIP baseline)": lotlip_split,
        "nltk `PunktSentenceTokenizer()` untrained": untrained.tokenize,
        '`split_caption(t)` (engine "rules")': split_caption,
        '`split_caption(t, engine="punkt")`': lambda t: split_caption(t, engine="punkt"),
    }
    ours = '`split_caption(t)` (engine "rules")'

    acc = {name: accuracy(f, cases) for name, f in splitters.items()}
    if args.accuracy_only:
        print(f"accuracy on {len(cases)} labelled captions ({args.cases})\n")
        print("| splitter | exact split | boundary |\n|---|---:|---:|")
        for name in splitters:
            print(f"| {name} | {acc[name][0]:.1%} | {acc[name][1]:.1%} |")
        print(
            "\n".join(
                [
                    "",
                    f"{ours} per category:",
                    *category_report(split_caption, load_rows(args.cases)),
                ]
            )
        )
        return
    speed = {name: throughput(f, corpus, args.repeat) for name, f in splitters.items()}

    chars = sum(map(len, corpus)) / len(corpus)
    tokens = mean_bert_tokens(corpus)
    tok = f", {tokens:.0f} BERT tokens" if tokens is not None else ""
    print(
        f"{len(corpus)} captions (mean {chars:.0f} chars{tok}), best of {args.repeat}, "
        f"1 core, Python {platform.python_version()}, {platform.processor() or platform.machine()}"
    )
    print(f"accuracy on {len(cases)} labelled captions ({args.cases})\n")
    print(
        "| splitter | captions/s (1 core) | `split_caption` speed / this | exact split | boundary |"
    )
    print("|---|---:|---:|---:|---:|")
    for name in splitters:
        ratio = speed[ours] / speed[name]
        exact, boundary = acc[name]
        print(f"| {name} | {speed[name]:,.0f} | {ratio:.2f}x | {exact:.1%} | {boundary:.1%} |")


if __name__ == "__main__":
    main()
