"""Text construction for training and evaluation: one pair of pure functions.

A text is a list of *pieces*; the tokenizer (train_hooks/tokenizer.py) writes
`[CLS] [Corner0..K-1] piece1 [SEP] piece2 [SEP] ...`. Every piece here is ONE sub-caption, so
every sub-caption is followed by [SEP], in training and at evaluation alike, as LoTLIP's tokenizer
does when it turns each '. ' of a text into [SEP] (docs/TRAINING_TEXTS.md cites the lines).
A window of m consecutive sub-captions therefore contributes m pieces.

- `eval_text(subcaptions)`: the evaluation text of one long caption, every sub-caption a piece.
- `training_texts(long_captions, spec, rng, count)`: the T long texts of one training sample,
  built by one of three modes (TextSpec.mode):
  - `fill` (default): disjoint windows drawn at random, without repetition, kept in caption
    order, until the token budget (context length - [CLS] - K corners, each piece costing its
    tokens + its [SEP]) is full. Token counts come from the shards' `subcaption_tokens` when
    present, else from `count` (the tokenizer). A fill text never needs the tokenizer to cut it,
    unless a single sub-caption is longer than the whole budget (then that one is cut).
  - `dreamlip`: DreamLIP's loader: T texts, each `m` consecutive sub-captions of one flat list
    (the sample's captions concatenated, across models), starts drawn by `random.sample` when
    there are enough and `random.choices` otherwise. Its start range is `range(n - m + 1)`; the
    flag `dreamlip_off_by_one` restores DreamLIP's `range(n - 1)` (m = 1) / `range(n - m - 1)`
    (m > 1), under which the last sub-caption is never drawn.
  - `k`: k disjoint windows per text, drawn so that a window never blocks the others; a caption
    that cannot hold k windows gives fewer pieces (never a repeated sentence).
  With T > 1 texts (fill, k), a text never repeats a sub-caption, and sub-captions no earlier text
  of the sample used are drawn first; only when those run out (fill) are used ones drawn again.
- `short_texts(caption, short_captions, n, rng)`: the raw caption plus n MLLM short captions.

Windows come from one long caption (`one_model`: one caption per text, a different one for each
text while there are enough) or from all of them (`across_models`: a window never straddles two
captions, except in `dreamlip` mode, whose flat list is DreamLIP's own).

Everything takes plain lists and a `random.Random` (or a seed); nothing here imports torch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ONE_MODEL = "one_model"  # one long caption (one model's) per text, picked at random
ACROSS_MODELS = "across_models"  # windows pooled from every model's caption of the sample
MODES = (ONE_MODEL, ACROSS_MODELS)

FILL = "fill"
DREAMLIP = "dreamlip"
K_WINDOWS = "k"
TEXT_MODES = (FILL, DREAMLIP, K_WINDOWS)

Counter = Callable[[list[str]], list[int]]


@dataclass(frozen=True)
class TextSpec:
    """How the long texts of a training sample are built (see the module docstring)."""

    mode: str = FILL
    k: int = 4  # k mode: windows per text
    m: int = 1  # consecutive sub-captions per window (DreamLIP's `merged_num`)
    source: str = ACROSS_MODELS  # across_models (fills the context) | one_model
    texts: int = 1  # T long texts per image (DreamLIP's `num_text` in dreamlip mode)
    budget: int | None = None  # fill: tokens for pieces and their [SEP]s
    models: tuple[str, ...] | None = None  # only these models' captions
    dreamlip_off_by_one: bool = False

    def __post_init__(self) -> None:
        if self.mode not in TEXT_MODES:
            raise ValueError(f"text mode must be one of {TEXT_MODES}, got {self.mode!r}")
        if self.source not in MODES:
            raise ValueError(f"sub-caption mode must be one of {MODES}, got {self.source!r}")
        if self.m < 1 or self.k < 1 or self.texts < 1:
            raise ValueError(
                f"window m, k and long texts T must be >= 1, got m={self.m}, k={self.k}, "
                f"T={self.texts}"
            )
        if self.mode == FILL and (self.budget is None or self.budget < 1):
            raise ValueError(
                f"fill mode needs a token budget >= 1 (context length minus [CLS] and the corner "
                f"tokens), got {self.budget}"
            )


def window_starts(n: int, m: int) -> list[int]:
    """Start indices of the windows of m consecutive items among n (one window when n <= m)."""
    if n <= 0:
        return []
    if m <= 0:
        raise ValueError(f"window size m must be >= 1, got {m}")
    return list(range(max(1, n - m + 1)))


def usable_captions(
    long_captions: Sequence[Mapping[str, Any]], models: Sequence[str] | None = None
) -> list[Mapping[str, Any]]:
    """The long captions that can be used: status ok (or absent), with sub-captions, and of one
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


def eval_text(subcaptions: Sequence[str]) -> list[str]:
    """The pieces of one long caption's evaluation text: every non-empty sub-caption, in order,
    each followed by [SEP] by the tokenizer (as LoTLIP evaluates; cut to the context length)."""
    return [s for s in subcaptions if s]


def full_long_texts(
    long_captions: Sequence[Mapping[str, Any]], models: Sequence[str] | None = None
) -> list[tuple[str, list[str]]]:
    """Evaluation texts of a sample: every usable caption as (model, eval_text(its subs))."""
    return [
        (str(c.get("model")), eval_text(c["subcaptions"]))
        for c in usable_captions(long_captions, models)
    ]


def _subs_and_tokens(cap: Mapping[str, Any], count: Counter | None) -> tuple[list[str], list[int]]:
    """A caption's non-empty sub-captions with their token counts: the shard's
    `subcaption_tokens` when it has one per sub-caption, else `count`'s (or 0 without one)."""
    subs = list(cap.get("subcaptions") or ())
    toks = cap.get("subcaption_tokens")
    if not toks or len(toks) != len(subs) or any(t is None for t in toks):
        toks = count(subs) if count is not None else [0] * len(subs)
    pairs = [(s, int(t)) for s, t in zip(subs, toks, strict=True) if s]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@dataclass(frozen=True)
class _Window:
    cap: int  # caption index in the pool
    start: int
    stop: int  # exclusive
    cost: int  # tokens of its sub-captions + one [SEP] each


def _windows(subs: list[list[str]], toks: list[list[int]], caps: Sequence[int], m: int):
    out = []
    for ci in caps:
        for s in window_starts(len(subs[ci]), m):
            e = min(s + m, len(subs[ci]))
            out.append(_Window(ci, s, e, sum(toks[ci][s:e]) + (e - s)))
    return out


def _overlaps(w: _Window, taken: set[tuple[int, int]]) -> bool:
    return any((w.cap, i) in taken for i in range(w.start, w.stop))


def _cells(w: _Window) -> set[tuple[int, int]]:
    return {(w.cap, i) for i in range(w.start, w.stop)}


def _fill(
    rng: random.Random,
    windows: list[_Window],
    used: set[tuple[int, int]],
    budget: int,
    subs: list[list[str]],
) -> list[_Window]:
    """Disjoint windows in random order, fresh ones (no sub-caption in `used`) first, each
    taken when it fits the room left and repeats no sentence already in the text (two
    captioners often write the same one, e.g. "No text is visible."), until none fits;
    returned in caption order."""
    order = list(windows)
    rng.shuffle(order)
    # A stable sort on staleness keeps the random order inside each group.
    order.sort(key=lambda w: _overlaps(w, used))
    taken: set[tuple[int, int]] = set()
    said: set[str] = set()
    chosen: list[_Window] = []
    left = budget
    for w in order:
        if w.cost > left or _overlaps(w, taken):
            continue
        sentences = {" ".join(subs[w.cap][i].lower().split()) for i in range(w.start, w.stop)}
        if sentences & said:
            continue
        chosen.append(w)
        taken |= _cells(w)
        said |= sentences
        left -= w.cost
    if not chosen and order:
        # Not even one window fits: one sub-caption (the tokenizer cuts it), not an empty text.
        w = order[0]
        chosen = [_Window(w.cap, w.start, w.start + 1, 0)]
    return sorted(chosen, key=lambda w: (w.cap, w.start))


def _capacity(windows: list[_Window], taken: set[tuple[int, int]]) -> int:
    """Most disjoint windows that still fit beside `taken` (leftmost-first is optimal for
    windows of equal length within a caption)."""
    busy = set(taken)
    n = 0
    for w in sorted(windows, key=lambda w: (w.cap, w.start)):
        if not _overlaps(w, busy):
            busy |= _cells(w)
            n += 1
    return n


def _k_windows(
    rng: random.Random, windows: list[_Window], used: set[tuple[int, int]], k: int
) -> list[_Window]:
    """min(k, as many as fit) disjoint windows, in caption order. Each is drawn uniformly among
    the windows that keep the count reachable (so a middle window never blocks the draw), fresh
    ones (no sub-caption in `used`) first."""
    target = min(k, _capacity(windows, set()))
    taken: set[tuple[int, int]] = set()
    chosen: list[_Window] = []
    while len(chosen) < target:
        need = target - len(chosen) - 1
        ok = [
            w
            for w in windows
            if not _overlaps(w, taken) and _capacity(windows, taken | _cells(w)) >= need
        ]
        fresh = [w for w in ok if not _overlaps(w, used)]
        w = rng.choice(fresh or ok)
        chosen.append(w)
        taken |= _cells(w)
    return sorted(chosen, key=lambda w: (w.cap, w.start))


def _dreamlip_texts(flat: list[str], spec: TextSpec, rng: random.Random) -> list[list[str]]:
    n, m = len(flat), spec.m
    if spec.dreamlip_off_by_one:
        # DreamLIP training/data.py L257 (m = 1) and L260 (m > 1), commit d2aeea8.
        population = list(range(n - 1 if m == 1 else n - m - 1))
        if not population:  # DreamLIP would fail here (random.choices of nothing)
            population = [0]
    else:
        population = window_starts(n, m)
    if len(population) >= spec.texts:
        starts = rng.sample(population, spec.texts)
    else:
        starts = rng.choices(population, k=spec.texts)
    return [eval_text(flat[s : s + m]) for s in starts]


def training_texts(
    long_captions: Sequence[Mapping[str, Any]],
    spec: TextSpec,
    rng: random.Random | int | None = None,
    count: Counter | None = None,
) -> list[list[str]]:
    """The spec.texts long texts (lists of pieces) of one training sample; [] when it has no
    usable long caption (the trainer then uses its short caption instead).

    `count(pieces) -> token counts` is used for captions whose shard has no `subcaption_tokens`
    (fill mode only needs counts)."""
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    caps = usable_captions(long_captions, spec.models)
    if not caps:
        return []
    need = count if spec.mode == FILL else None
    pairs = [_subs_and_tokens(c, need) for c in caps]
    subs, toks = [p[0] for p in pairs], [p[1] for p in pairs]
    if spec.mode == DREAMLIP:
        if spec.source == ONE_MODEL:
            return _dreamlip_texts(subs[rng.randrange(len(subs))], spec, rng)
        return _dreamlip_texts([s for sc in subs for s in sc], spec, rng)

    if spec.source == ONE_MODEL:
        # A different caption for each text while there are enough, then around again.
        order: list[int] = []
        while len(order) < spec.texts:
            order += rng.sample(range(len(caps)), len(caps))
        per_text = [[ci] for ci in order[: spec.texts]]
    else:
        per_text = [list(range(len(caps)))] * spec.texts
    used: set[tuple[int, int]] = set()
    texts = []
    for owned in per_text:
        windows = _windows(subs, toks, owned, spec.m)
        if spec.mode == FILL:
            chosen = _fill(rng, windows, used, spec.budget or 0, subs)
        else:
            chosen = _k_windows(rng, windows, used, spec.k)
        used.update((w.cap, i) for w in chosen for i in range(w.start, w.stop))
        texts.append([subs[w.cap][i] for w in chosen for i in range(w.start, w.stop)])
    return texts


def short_texts(
    caption: str,
    short_captions: Sequence[Mapping[str, Any]] | None,
    n: int,
    rng: random.Random,
    models: Sequence[str] | None = None,
) -> list[str]:
    """The raw caption, then n MLLM short captions (of `models` when given) drawn without
    repetition; a sample with fewer repeats them, one with none repeats its raw caption, so
    every sample has 1 + n short texts."""
    pool = [
        str(sc["text"])
        for sc in short_captions or ()
        if sc.get("text") and (models is None or sc.get("model") in models)
    ]
    if n <= 0:
        return [caption]
    if not pool:
        return [caption] * (1 + n)
    picked: list[str] = []
    while len(picked) < n:
        picked += rng.sample(pool, min(len(pool), n - len(picked)))
    return [caption, *picked]


def sample_seed(seed: int, epoch: int, key: str) -> int:
    """A per-sample seed independent of worker layout and of what was skipped before it, so that
    resuming (which skips samples without decoding them) draws the same sub-captions."""
    import zlib

    return (seed * 1_000_003 + epoch * 7_919 + zlib.crc32(key.encode())) & 0x7FFFFFFF
