"""Statistics of a whole built dataset: `longcap stats DIR`.

Reads each shard's `_stats.json` (exact histograms, so the merge is exact). A shard without one
(written by an older tool, or its stats file lost) is counted from its Parquet metadata columns;
image bytes are never read.

`collect_stats(root, split_engine="regex")` re-splits the stored texts instead of using the
stored sub-captions: it reads every shard's Parquet text columns (never images) and counts the
sub-captions the chosen `shards.split` engine gives. With "regex" (LoTLIP's
``re.split(r'\n|</s>|[.]')``) the sub-caption counts are comparable with LoTLIP's Table 1.

`caption_accuracy(root)` scores each model's long captions (and the raw captions) against the
shards' `truth` column with `toyworld.score`, reading only the Parquet text columns; toyworld is
imported only when some shard carries truth, so the product does not depend on it otherwise.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shards import schema as S
from shards import storage
from shards.inputs import InputError
from shards.shard_reader import read_shard_table
from shards.split import ENGINES, split_caption
from shards.stats import CONTEXT_LENGTHS, STATS_VERSION, ShardStats, TextGroup, merge_stats

log = logging.getLogger(__name__)


_FALLBACK_COLUMNS = [
    "status",
    "source",
    "caption",
    "caption_tokens",
    "caption_subcaptions",
    "long_captions.list.element.model",
    "long_captions.list.element.status",
    "long_captions.list.element.tokens",
    "long_captions.list.element.subcaption_tokens",
]


def _np(array, fill) -> np.ndarray:
    return pc.fill_null(array, fill).to_numpy(zero_copy_only=False)


def _resplit_counts(texts: list[str | None], engine: str) -> np.ndarray:
    """Sub-captions per text with `engine` (a Python loop: splitting is per text)."""
    return np.fromiter(
        (len(split_caption(t, engine)) if t else 0 for t in texts), np.int64, len(texts)
    )


def stats_from_parquet(parquet: Path, split_engine: str | None = None) -> ShardStats:
    """A shard's statistics from its Parquet metadata columns, vectorised (no image bytes).

    With `split_engine`, sub-captions are counted by re-splitting the stored texts (the
    caption and every long caption) with that engine, not taken from the stored sub-captions.
    """
    columns = _FALLBACK_COLUMNS + (["long_captions.list.element.text"] if split_engine else [])
    table = read_shard_table(parquet, columns=columns)
    st = ShardStats()
    st.shards = 1
    status = _np(table["status"], "")
    ok = status == S.STATUS_OK
    st.count, st.successes = len(status), int(ok.sum())
    st.failures.update(Counter(status[~ok].tolist()))
    source = _np(table["source"], "unknown")
    has_caption = _np(pc.utf8_length(table["caption"]), 0) > 0
    raw_tokens = _np(table["caption_tokens"], 0)
    if split_engine:
        raw_subs = np.maximum(_resplit_counts(table["caption"].to_pylist(), split_engine), 1)
    else:
        raw_subs = np.maximum(_np(table["caption_subcaptions"], 1), 1)  # as ShardStats.add does
    longs = table["long_captions"]
    flat = pc.list_flatten(longs)
    parent = pc.list_parent_indices(longs).to_numpy()
    model = _np(pc.struct_field(flat, "model"), "")
    lstatus = _np(pc.struct_field(flat, "status"), S.LONG_OK)
    tokens = _np(pc.struct_field(flat, "tokens"), 0)
    if split_engine:
        subs = _resplit_counts(pc.struct_field(flat, "text").to_pylist(), split_engine)
    else:
        subs = _np(pc.list_value_length(pc.struct_field(flat, "subcaption_tokens")), 0)
    long_ok = ok[parent] & (lstatus == S.LONG_OK)
    for m, reason in zip(
        model[ok[parent] & ~long_ok].tolist(), lstatus[ok[parent] & ~long_ok].tolist(), strict=True
    ):
        st.model_failures.setdefault(m, Counter())[reason] += 1
    raw = ok & has_caption
    st.raw.add_many(raw_tokens[raw], raw_subs[raw])
    st.long.add_many(tokens[long_ok], subs[long_ok])
    for m in sorted(set(model[long_ok].tolist())):
        sel = long_ok & (model == m)
        st.by_model.setdefault(m, TextGroup()).add_many(tokens[sel], subs[sel])
    for name in sorted(set(source[ok].tolist())):
        src = st._source(name)
        src["images"] += int((ok & (source == name)).sum())
        sel = raw & (source == name)
        src["raw"].add_many(raw_tokens[sel], raw_subs[sel])
        lsel = long_ok & (source[parent] == name)
        src["long"].add_many(tokens[lsel], subs[lsel])
    return st


def collect_stats(root: str | Path, split_engine: str | None = None) -> ShardStats:
    """Merge the statistics of every shard under `root` (searched recursively).

    `split_engine` ("rules", "punkt" or "regex") recounts sub-captions by re-splitting the texts
    stored in each shard's Parquet file; None takes the counts stored at assembly.
    """
    root = storage.as_path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    if split_engine is not None and split_engine not in ENGINES:
        raise ValueError(f"split engine {split_engine!r}: expected one of {', '.join(ENGINES)}")
    parts: list[ShardStats] = []
    covered: set[Path] = set()
    for path in sorted(root.rglob("*_stats.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise InputError(f"{path}: unreadable stats file ({exc})") from exc
        if data.get("stats_version") != STATS_VERSION:
            # img2dataset writes NNNNN_stats.json too; it is not ours.
            continue
        parquet = path.with_name(path.name[: -len("_stats.json")] + ".parquet")
        covered.add(parquet)
        if split_engine is not None:
            if not parquet.exists():
                raise InputError(
                    f"{parquet}: missing; --split-engine re-splits the texts stored in each "
                    "shard's Parquet file (shards built with --formats tar have none): "
                    "rebuild with --formats parquet,tar or drop --split-engine"
                )
            parts.append(stats_from_parquet(parquet, split_engine))
            continue
        try:
            parts.append(ShardStats.from_json(data))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: malformed longcap stats ({exc!r})") from exc
    for parquet in sorted(root.rglob("*.parquet")):
        if parquet in covered:
            continue
        try:
            parts.append(stats_from_parquet(parquet, split_engine))
            log.warning("%s: no stats file, counted from its Parquet metadata", parquet)
        except InputError:
            continue  # not a longcap shard (e.g. an img2dataset sidecar)
    if not parts:
        raise InputError(f"{root}: no longcap shards found (no *_stats.json or shard .parquet)")
    return merge_stats(parts)


_ACCURACY_COLUMNS = [
    "status",
    "caption",
    "long_captions.list.element.model",
    "long_captions.list.element.status",
    "long_captions.list.element.text",
]


def _shard_parquets(root: Path) -> list[Path]:
    """The longcap shards' Parquet files under root (img2dataset sidecars and others skipped)."""
    found = []
    for parquet in sorted(root.rglob("*.parquet")):
        try:
            meta = pq.read_schema(storage.random_access(parquet)).metadata or {}
        except Exception:  # not a readable Parquet file: not ours to judge here
            continue
        if S.SCHEMA_METADATA_KEY in meta:
            found.append(parquet)
    return found


def caption_accuracy(root: str | Path) -> dict[str, Any] | None:
    """Caption accuracy against truth, or None when no shard under `root` carries truth.

    {"images": images with truth, "unreadable_truth": n, "by_model": {model: score},
    "raw": score of the raw captions}, each score `toyworld.score.CaptionScore.to_json()`:
    truth objects, mentions, correct (shape + colour + cell), correct_with_size, misplaced,
    hallucinated, recall, hallucination_rate, misplaced_rate, background_accuracy. Failed
    samples and long captions whose status is not ok are not scored."""
    pairs: list[tuple[str, str, Any]] = []
    images = unreadable = 0
    found = False
    for parquet in _shard_parquets(storage.as_path(root)):
        if "truth" not in pq.read_schema(storage.random_access(parquet)).names:
            continue  # schema version 1: no truth
        truth = read_shard_table(parquet, columns=["truth"])["truth"]
        if truth.null_count == len(truth):
            continue
        from toyworld.scenes import Scene  # here: only shards with truth need toyworld

        found = True
        table = read_shard_table(parquet, columns=_ACCURACY_COLUMNS)
        for row, text in zip(table.to_pylist(), truth.to_pylist(), strict=True):
            if text is None or row["status"] != S.STATUS_OK:
                continue
            try:
                scene = Scene.from_dict(json.loads(text))
            except (ValueError, KeyError, TypeError):
                unreadable += 1  # truth of another kind than a toyworld scene
                continue
            images += 1
            pairs.append(("", row["caption"] or "", scene))
            for lc in row["long_captions"] or []:
                if lc["status"] in (None, S.LONG_OK):
                    pairs.append((lc["model"], lc["text"] or "", scene))
    if not found:
        return None
    from toyworld.score import score_captions

    scores = {m: s.to_json() for m, s in score_captions(pairs).items()}
    raw = scores.pop("", None)
    return {"images": images, "unreadable_truth": unreadable, "by_model": scores, "raw": raw}


def add_caption_accuracy(report: dict[str, Any], root: str | Path) -> dict[str, Any]:
    """`report` (ShardStats.report()) with "caption_accuracy" added where the shards carry truth."""
    accuracy = caption_accuracy(root)
    if accuracy is not None:
        report["caption_accuracy"] = accuracy
    return report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_accuracy(accuracy: dict[str, Any]) -> list[str]:
    """The caption accuracy section of the stats report, as lines."""
    header = ["", "captions", "objects", "mentions", "correct", "+size", "halluc.", "misplaced"]
    header.append("background")
    groups = dict(accuracy["by_model"])
    if accuracy.get("raw"):
        groups["raw captions"] = accuracy["raw"]
    rows = [
        [
            name if name == "raw captions" else f"model {name}",
            f"{s['captions']:,}",
            f"{s['truth_objects']:,}",
            f"{s['mentions']:,}",
            _pct(s["recall"]),
            _pct(s["size_recall"]),
            _pct(s["hallucination_rate"]),
            _pct(s["misplaced_rate"]),
            _pct(s["background_accuracy"]),
        ]
        for name, s in groups.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([cells[0].ljust(widths[0]), *rest])

    out = [
        f"caption accuracy against truth ({accuracy['images']:,} images with truth)",
        "  correct: truth objects named with shape + colour + cell (+size: and size);",
        "  halluc.: mentions that match no object of the scene; misplaced: mentions of an object",
        "  of the scene in the wrong cell or in none (both as a share of mentions)",
        line(header),
        line(["-" * w for w in widths]),
        *(line(r) for r in rows),
    ]
    if accuracy.get("unreadable_truth"):
        out.append(f"  {accuracy['unreadable_truth']:,} images with truth that is not a scene")
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _row(name: str, images: Any, summary: dict[str, Any]) -> list[str]:
    pct = summary["tokens_percentiles"]
    share = summary["share_over"]
    return [
        name,
        _fmt(images),
        _fmt(summary["texts"]),
        _fmt(summary["subcaptions_per_text"], 2),
        _fmt(summary["tokens_per_text"]),
        *(_fmt(pct[k], 0) for k in ("p50", "p90", "p99", "max")),
        *(
            ("-" if share[str(n)] is None else f"{100 * share[str(n)]:.1f}%")
            for n in CONTEXT_LENGTHS
        ),
    ]


def format_report(report: dict[str, Any]) -> str:
    """LoTLIP Table 1 as text: overall, per model, per source, raw captions; then failures."""
    header = ["", "images", "texts", "subcap/text", "tokens/text", "p50", "p90", "p99", "max"]
    header += [f">{n}" for n in CONTEXT_LENGTHS]
    rows = [_row("long captions (all models)", report["images"], report)]
    rows += [_row(f"  model {m}", "", s) for m, s in report["by_model"].items()]
    rows += [_row(f"  source {n}", s["images"], s) for n, s in report["by_source"].items()]
    rows.append(_row("raw captions", report["images"], report["raw"]))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    out = [
        f"{report['shards']} shards, {report['samples']:,} samples: "
        f"{report['images']:,} images, {report['failed']:,} failed",
    ]
    if report.get("split_engine"):
        out.append(f"sub-captions re-split with engine {report['split_engine']!r}")
    out += [
        "",
        line(header),
        line(["-" * w for w in widths]),
        *(line(r) for r in rows),
    ]
    out.append("")
    if report.get("caption_accuracy"):
        out += [*format_accuracy(report["caption_accuracy"]), ""]
    if report["failures"]:
        out.append("failures by reason:")
        out += [f"  {reason}: {n:,}" for reason, n in report["failures"].items()]
    else:
        out.append("failures by reason: none")
    return "\n".join(out)


def write_plots(stats: ShardStats, out_dir: str | Path) -> list[Path]:
    """PNG histograms: tokens per text and sub-captions per text, overall and per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = {"all models": stats.long, **stats.by_model, "raw captions": stats.raw}
    written = []
    for attr, title, fname in (
        ("tokens_hist", "BERT tokens per text", "tokens_per_text.png"),
        ("subcaptions_hist", "sub-captions per text", "subcaptions_per_text.png"),
    ):
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        for name, group in groups.items():
            hist = getattr(group, attr)
            if not hist:
                continue
            xs = sorted(hist)
            total = sum(hist.values())
            ax.step(xs, [hist[x] / total for x in xs], where="mid", label=f"{name} (n={total:,})")
        if attr == "tokens_hist":
            for n in CONTEXT_LENGTHS:
                ax.axvline(n, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel(title)
        ax.set_ylabel("share of texts")
        ax.set_title(f"{title} ({stats.successes:,} images)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / fname
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
