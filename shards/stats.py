"""Per-shard and whole-dataset statistics: LoTLIP's Table 1 figures and token-length shares.

A shard's `NNNNN_stats.json` carries exact histograms (token count -> number of texts), so that
merging shards gives exact means, percentiles and shares without reading any sample again.
Everything here is pure: samples or JSON in, plain dicts out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from shards.schema import LONG_OK, Sample

STATS_VERSION = 1
# Context lengths that matter: CLIP (77), LoTLIP (128, 192 default), Long-CLIP (248).
CONTEXT_LENGTHS = (77, 128, 192, 248)
PERCENTILES = (50, 90, 99)


class TextGroup:
    """Counts over a set of texts: how many, their sub-captions and their tokens."""

    def __init__(self) -> None:
        self.tokens_hist: Counter[int] = Counter()
        self.subcaptions_hist: Counter[int] = Counter()

    def add(self, tokens: int, subcaptions: int) -> None:
        self.tokens_hist[int(tokens)] += 1
        self.subcaptions_hist[int(subcaptions)] += 1

    def add_many(self, tokens, subcaptions) -> None:
        """Count many texts at once (numpy integer arrays of equal length)."""
        import numpy as np

        for hist, values in ((self.tokens_hist, tokens), (self.subcaptions_hist, subcaptions)):
            uniq, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
            hist.update(dict(zip(uniq.tolist(), counts.tolist(), strict=True)))

    def merge(self, other: TextGroup) -> None:
        self.tokens_hist.update(other.tokens_hist)
        self.subcaptions_hist.update(other.subcaptions_hist)

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens_hist": {str(k): v for k, v in sorted(self.tokens_hist.items())},
            "subcaptions_hist": {str(k): v for k, v in sorted(self.subcaptions_hist.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TextGroup:
        group = cls()
        group.tokens_hist.update({int(k): int(v) for k, v in data["tokens_hist"].items()})
        group.subcaptions_hist.update({int(k): int(v) for k, v in data["subcaptions_hist"].items()})
        return group

    def summary(self) -> dict[str, Any]:
        texts = sum(self.tokens_hist.values())
        return {
            "texts": texts,
            "subcaptions_per_text": _mean(self.subcaptions_hist),
            "tokens_per_text": _mean(self.tokens_hist),
            "tokens_percentiles": {
                **{f"p{p}": histogram_percentile(self.tokens_hist, p) for p in PERCENTILES},
                "max": max(self.tokens_hist) if self.tokens_hist else None,
            },
            "share_over": {
                str(n): (_count_over(self.tokens_hist, n) / texts if texts else None)
                for n in CONTEXT_LENGTHS
            },
        }


def _mean(hist: Counter[int]) -> float | None:
    n = sum(hist.values())
    return sum(k * v for k, v in hist.items()) / n if n else None


def _count_over(hist: Counter[int], limit: int) -> int:
    return sum(v for k, v in hist.items() if k > limit)


def histogram_percentile(hist: Mapping[int, int], pct: float) -> int | None:
    """The nearest-rank percentile of the values a histogram counts (None when empty)."""
    total = sum(hist.values())
    if total == 0:
        return None
    # Nearest rank: the smallest value whose cumulative count reaches pct% of the total.
    rank = max(1, -(-total * pct // 100))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return max(hist)


class ShardStats:
    """Accumulates the statistics of one shard (or, merged, of a dataset)."""

    def __init__(self) -> None:
        self.count = 0
        self.successes = 0
        self.failures: Counter[str] = Counter()
        self.raw = TextGroup()
        self.long = TextGroup()
        self.by_model: dict[str, TextGroup] = {}
        self.model_failures: dict[str, Counter[str]] = {}
        self.by_source: dict[str, dict[str, Any]] = {}
        self.shards = 0

    def _source(self, name: str) -> dict[str, Any]:
        if name not in self.by_source:
            self.by_source[name] = {"images": 0, "raw": TextGroup(), "long": TextGroup()}
        return self.by_source[name]

    def add(self, sample: Sample) -> None:
        """Count one sample (failed ones count by their status)."""
        self.count += 1
        if not sample.ok:
            self.failures[sample.status] += 1
            return
        self.successes += 1
        src = self._source(sample.source or "unknown")
        src["images"] += 1
        if sample.caption:
            subs = sample.caption_subcaptions or 1
            self.raw.add(sample.caption_tokens or 0, subs)
            src["raw"].add(sample.caption_tokens or 0, subs)
        for lc in sample.long_captions:
            if lc.status != LONG_OK:
                self.model_failures.setdefault(lc.model, Counter())[lc.status] += 1
                continue
            tokens, subs = lc.tokens or 0, len(lc.subcaptions)
            self.long.add(tokens, subs)
            self.by_model.setdefault(lc.model, TextGroup()).add(tokens, subs)
            src["long"].add(tokens, subs)

    def merge(self, other: ShardStats) -> None:
        self.shards += other.shards
        self.count += other.count
        self.successes += other.successes
        self.failures.update(other.failures)
        self.raw.merge(other.raw)
        self.long.merge(other.long)
        for model, group in other.by_model.items():
            self.by_model.setdefault(model, TextGroup()).merge(group)
        for model, fails in other.model_failures.items():
            self.model_failures.setdefault(model, Counter()).update(fails)
        for name, src in other.by_source.items():
            mine = self._source(name)
            mine["images"] += src["images"]
            mine["raw"].merge(src["raw"])
            mine["long"].merge(src["long"])

    def to_json(self) -> dict[str, Any]:
        return {
            "stats_version": STATS_VERSION,
            "count": self.count,
            "successes": self.successes,
            "failed": self.count - self.successes,
            "failures": dict(sorted(self.failures.items())),
            "raw": self.raw.to_json(),
            "long": self.long.to_json(),
            "by_model": {m: g.to_json() for m, g in sorted(self.by_model.items())},
            "model_failures": {m: dict(c) for m, c in sorted(self.model_failures.items())},
            "by_source": {
                s: {"images": d["images"], "raw": d["raw"].to_json(), "long": d["long"].to_json()}
                for s, d in sorted(self.by_source.items())
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardStats:
        if data.get("stats_version") != STATS_VERSION:
            raise ValueError(f"stats_version {data.get('stats_version')!r} != {STATS_VERSION}")
        st = cls()
        st.shards = 1
        st.count = int(data["count"])
        st.successes = int(data["successes"])
        st.failures.update(data["failures"])
        st.raw = TextGroup.from_json(data["raw"])
        st.long = TextGroup.from_json(data["long"])
        st.by_model = {m: TextGroup.from_json(g) for m, g in data["by_model"].items()}
        st.model_failures = {m: Counter(c) for m, c in data["model_failures"].items()}
        for name, src in data["by_source"].items():
            st.by_source[name] = {
                "images": int(src["images"]),
                "raw": TextGroup.from_json(src["raw"]),
                "long": TextGroup.from_json(src["long"]),
            }
        return st

    def report(self) -> dict[str, Any]:
        """The dataset report: Table 1 figures overall, per model, per source, raw captions."""
        long = self.long.summary()
        failures = dict(sorted(self.failures.items()))
        for model, fails in sorted(self.model_failures.items()):
            for reason, n in sorted(fails.items()):
                failures[f"{model}:{reason}"] = n
        return {
            "shards": self.shards,
            "samples": self.count,
            "images": self.successes,
            "failed": self.count - self.successes,
            "texts": long["texts"],
            "subcaptions_per_text": long["subcaptions_per_text"],
            "tokens_per_text": long["tokens_per_text"],
            "tokens_percentiles": long["tokens_percentiles"],
            "share_over": long["share_over"],
            "raw": self.raw.summary(),
            "by_model": {m: g.summary() for m, g in sorted(self.by_model.items())},
            "by_source": {
                s: {"images": d["images"], **d["long"].summary(), "raw": d["raw"].summary()}
                for s, d in sorted(self.by_source.items())
            },
            "failures": failures,
        }


def merge_stats(parts: Iterable[ShardStats]) -> ShardStats:
    total = ShardStats()
    for part in parts:
        total.merge(part)
    return total
