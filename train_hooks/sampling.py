"""Pure sub-caption sampling: which k windows of a sample's long captions make its long text.

LoTLIP's long text of an image is k sub-captions joined with [SEP]. Here each of the k pieces is a
window of m consecutive sub-captions (m = 1: single sentences), drawn without replacement among all
window starts; only when a caption has fewer than k windows are windows repeated (all of them
first, then random extra ones), so a short caption still fills k slots.

DreamLIP's sampler draws starts from `range(len(long) - merged - 1)`, so the last sub-caption can
never be picked. Here the starts are `0 .. n - m` inclusive: every sub-caption is reachable.

Everything takes plain lists and a `random.Random` (or a seed) and returns lists; nothing here
imports torch, so it is unit-tested on its own.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

ONE_MODEL = "one_model"  # one long caption (one model's) per sample, picked at random
ACROSS_MODELS = "across_models"  # windows pooled from every model's caption of the sample
MODES = (ONE_MODEL, ACROSS_MODELS)


def window_starts(n: int, m: int) -> list[int]:
    """Start indices of the windows of m consecutive items among n (one window when n <= m)."""
    if n <= 0:
        return []
    if m <= 0:
        raise ValueError(f"window size m must be >= 1, got {m}")
    return list(range(max(1, n - m + 1)))


def choose(rng: random.Random, population: Sequence[Any], k: int) -> list[Any]:
    """k items of population: without replacement when it has >= k items, else every item once
    (in random order) and then random repeats. The result keeps the population order for the
    distinct part, so a long text reads in caption order."""
    if k <= 0 or not population:
        return []
    if len(population) >= k:
        idx = sorted(rng.sample(range(len(population)), k))
        return [population[i] for i in idx]
    extra = [rng.randrange(len(population)) for _ in range(k - len(population))]
    return list(population) + [population[i] for i in extra]


def sample_windows(subcaptions: Sequence[str], k: int, m: int, rng: random.Random) -> list[str]:
    """k windows of m consecutive sub-captions of one caption, each window joined by spaces."""
    starts = choose(rng, window_starts(len(subcaptions), m), k)
    return [" ".join(subcaptions[s : s + m]) for s in starts]


def usable_captions(
    long_captions: Sequence[Mapping[str, Any]], models: Sequence[str] | None = None
) -> list[Mapping[str, Any]]:
    """The long captions that can be sampled: status ok (or absent), with sub-captions, and of one
    of `models` when given."""
    out = []
    for lc in long_captions or ():
        if lc.get("status", "ok") not in (None, "ok"):
            continue
        if models is not None and lc.get("model") not in models:
            continue
        if any(s for s in lc.get("subcaptions") or ()):
            out.append(lc)
    return out


def sample_long_text(
    long_captions: Sequence[Mapping[str, Any]],
    k: int,
    m: int = 1,
    mode: str = ONE_MODEL,
    rng: random.Random | int | None = None,
    models: Sequence[str] | None = None,
) -> list[str]:
    """The k pieces of one sample's long text; [] when it has no usable long caption (the
    trainer then falls back to the short caption).

    ONE_MODEL picks one caption uniformly, then k of its windows. ACROSS_MODELS pools the windows
    of every caption (a window never straddles two captions) and picks k of the pool.
    """
    if mode not in MODES:
        raise ValueError(f"sub-caption mode must be one of {MODES}, got {mode!r}")
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    caps = usable_captions(long_captions, models)
    if not caps or k <= 0:
        return []
    subs = [[s for s in c["subcaptions"] if s] for c in caps]
    if mode == ONE_MODEL:
        return sample_windows(subs[rng.randrange(len(subs))], k, m, rng)
    pool = [(ci, s) for ci, sc in enumerate(subs) for s in window_starts(len(sc), m)]
    return [" ".join(subs[ci][s : s + m]) for ci, s in choose(rng, pool, k)]


def full_long_texts(
    long_captions: Sequence[Mapping[str, Any]], models: Sequence[str] | None = None
) -> list[tuple[str, list[str]]]:
    """Evaluation texts: every usable caption as (model, all its sub-captions), as LoTLIP
    evaluates long-text retrieval on the whole caption split and joined with [SEP]."""
    return [
        (str(c.get("model")), [s for s in c["subcaptions"] if s])
        for c in usable_captions(long_captions, models)
    ]


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """A per-sample seed independent of worker layout and of what was skipped before it, so that
    resuming (which skips samples without decoding them) draws the same sub-captions."""
    import zlib

    return (seed * 1_000_003 + epoch * 7_919 + zlib.crc32(key.encode())) & 0x7FFFFFFF
