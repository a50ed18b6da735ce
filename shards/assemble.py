"""Assembly: input samples -> checked, cleaned, split and counted samples -> output shards.

This is `longcap shards`. Each output shard records in its stats the input rows it covers
(`input_start`, `input_end`), so a rerun after a kill skips the finished shards and starts at the
first input row not yet written: nothing is lost and nothing is written twice. Samples in = rows
written (ok or failed) is checked at the end of every run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from recaption.clean import clean_caption
from shards import schema as S
from shards import storage
from shards.fingerprint import (
    FingerprintMismatch,
    check_mark,
    fingerprint,
    input_identity,
    made_from,
    shard_files_identity,
)
from shards.inputs import InputError, InputSample, load_image_bytes
from shards.limits import ImageLimitError, open_image
from shards.readers import read_input
from shards.runlock import lock_output, remove_stale_temps, unlock_output
from shards.shard_reader import read_shard_table
from shards.split import ENGINES, split_caption
from shards.tar_reader import _iter_groups
from shards.text_rules import break_at_artefacts
from shards.tokens import count_tokens
from shards.writer import FORMATS, ShardWriter

log = logging.getLogger(__name__)

_UNSAFE_KEY = re.compile(r"[^\w\-]")
# AssembleConfig fields that do not change the output (left out of the fingerprint).
_NOT_OUTPUT = {"batch_size"}


@dataclass
class AssembleConfig:
    """Options of `longcap shards` (and of the assemble stage of a build)."""

    shard_size: int = 10_000
    max_shard_bytes: int = 1 << 30
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    parquet_images: bool = True
    tokenizer: str | None = None
    verify_images: bool = True
    batch_size: int = 512
    captions: str | None = None  # a recaption OUTPUT folder whose captions to join
    # shards.split engines: "rules" (fast), "punkt" (nltk) or "regex" (LoTLIP's re.split)
    split_engine: str = "rules"
    extra_abbreviations: list[str] = field(default_factory=list)  # never split after these
    extra_titles: list[str] = field(default_factory=list)  # "Gen.", "Fr.": never end a sentence
    # A manifest's image paths must resolve inside its folder (path_outside_root otherwise).
    allow_paths_outside: bool = False

    def split(self, text: str) -> list[str]:
        """`split_caption` with this config's engine and lexicon additions."""
        return split_caption(text, self.split_engine, self._splitter_config)

    @functools.cached_property
    def _splitter_config(self):
        """Built once, not per caption: the splitter is on the hot path."""
        if not (self.extra_abbreviations or self.extra_titles):
            return None
        from shards.split_rules import SplitterConfig

        return SplitterConfig(
            extra_abbreviations=frozenset(self.extra_abbreviations),
            extra_titles=frozenset(self.extra_titles),
        )

    def output_fields(self) -> dict[str, Any]:
        """The fields that change what is written (not batch_size): a shard's fingerprint."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_OUTPUT}

    def validate(self, where: str = "assemble config") -> None:
        if self.shard_size < 1:
            raise ValueError(f"{where}: shard_size must be >= 1, got {self.shard_size}")
        if self.max_shard_bytes < 1:
            raise ValueError(f"{where}: max_shard_bytes must be >= 1")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"{where}: formats {self.formats} must be a subset of {FORMATS}")
        if self.batch_size < 1:
            raise ValueError(f"{where}: batch_size must be >= 1")
        if self.split_engine not in ENGINES:
            raise ValueError(
                f"{where}: split_engine must be one of {', '.join(ENGINES)}, "
                f"got {self.split_engine!r}"
            )


@dataclass
class AssembleResult:
    out_dir: Path
    shards_written: list[dict[str, Any]]
    shards_skipped: int
    samples_in: int
    samples_ok: int
    samples_failed: int


def _valid_text(text: str | None) -> tuple[str | None, bool]:
    """(text safe to store, was it valid UTF-8). Lone surrogates mark undecodable bytes."""
    if text is None:
        return None, True
    try:
        text.encode("utf-8")
        return text, True
    except UnicodeEncodeError:
        fixed = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return fixed, False


def clean_text(text: str) -> str:
    """An image's own caption (alt text) with chat artefacts turned into line breaks (they
    split, `shards.text_rules`) and surrounding space dropped. Model captions get the whole
    of `recaption.clean.clean_caption` instead."""
    return break_at_artefacts(text).strip()


def check_image(data: bytes, verify: bool = True) -> tuple[int, int, str]:
    """(width, height, format) of an encoded image; raises on a corrupt or truncated one, and
    `shards.limits.ImageLimitError` (from the header, before decoding) over the caps."""
    with open_image(data) as im:
        width, height, fmt = im.size[0], im.size[1], (im.format or "").lower()
        if verify:
            if fmt == "jpeg":
                # Decoding at 1/8 scale still reads every entropy-coded byte.
                im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            im.load()
    return width, height, fmt


def _to_sample(inp: InputSample, cfg: AssembleConfig) -> S.Sample:
    """Check one input sample; texts are cleaned and split here, counted later in a batch."""
    caption, caption_ok = _valid_text(inp.caption)
    sample = S.Sample(
        key=inp.key,
        status=inp.status,
        error=inp.error,
        source=inp.source,
        url=_valid_text(inp.url)[0],
        caption=clean_text(caption) if caption else caption,
        image_format=inp.image_format,
        truth=_valid_text(inp.truth)[0],
    )
    if not sample.ok:
        return sample
    if not caption_ok:
        return _fail(sample, S.FAIL_CAPTION_ENCODING, f"{inp.origin}: caption is not UTF-8")
    data, missing = load_image_bytes(inp)
    if data is None:
        return _fail(sample, S.FAIL_IMAGE_MISSING, missing)
    try:
        sample.width, sample.height, fmt = check_image(data, cfg.verify_images)
    except ImageLimitError as exc:
        return _fail(sample, S.FAIL_IMAGE_LIMIT, f"{inp.origin}: {exc}")
    except Exception as exc:  # PIL raises many types for bad bytes
        return _fail(sample, S.FAIL_IMAGE_DECODE, f"{inp.origin}: {type(exc).__name__}: {exc}")
    sample.image, sample.image_format = data, fmt or inp.image_format
    sample.sha256 = hashlib.sha256(data).hexdigest()
    for model, entry in sorted(inp.long_captions.items()):
        sample.long_captions.append(_long_caption(model, entry, cfg))
    for model, text in sorted(inp.short_captions.items()):
        short, _ = _valid_text(text)
        sample.short_captions.append({"model": model, "text": clean_caption(short).text})
    has_long = any(lc.status == S.LONG_OK for lc in sample.long_captions)
    if not sample.caption and not has_long:
        return _fail(sample, S.FAIL_CAPTION_EMPTY, f"{inp.origin}: no caption and no long caption")
    if sample.caption:
        sample.caption_subcaptions = len(cfg.split(sample.caption))
    return sample


def _long_caption(model: str, entry: dict[str, Any], cfg: AssembleConfig) -> S.LongCaption:
    """One model's long caption, whatever its source (recaptioned, a released LoTLIP/DreamLIP
    column, a manifest's `long_captions`): cleaned by `clean_caption`, its flags added to the
    ones it came with (cleaning twice flags nothing new), then split."""
    text, ok = _valid_text(entry.get("text"))
    finish_reason = entry.get("finish_reason")
    cleaned = clean_caption(text, finish_reason)
    lc = S.LongCaption(
        model=model,
        text=cleaned.text,
        prompt=entry.get("prompt"),
        finish_reason=finish_reason,
        generated_tokens=entry.get("generated_tokens"),
        flags=sorted({*(entry.get("flags") or []), *cleaned.flags}),
        status=entry.get("status") or S.LONG_OK,
    )
    if lc.status != S.LONG_OK:
        return lc  # e.g. the recaption stage's reason this model has no caption
    if not ok:
        lc.status = S.LONG_NOT_UTF8
    elif not lc.text:
        lc.status = S.LONG_EMPTY
    if lc.status == S.LONG_OK:
        lc.subcaptions = cfg.split(lc.text)
        if not lc.subcaptions:
            lc.status = S.LONG_EMPTY
    return lc


def _fail(sample: S.Sample, status: str, error: str) -> S.Sample:
    sample.status, sample.error = status, error
    sample.long_captions, sample.short_captions = [], []
    sample.image = None
    return sample


def _count_batch(samples: list[S.Sample], tokenizer: str | None) -> None:
    """Fill every token count of a batch with one tokenizer call."""
    texts: list[str] = []
    for s in samples:
        if not s.ok:
            continue
        if s.caption:
            texts.append(s.caption)
        for lc in s.long_captions:
            if lc.status == S.LONG_OK:
                texts.append(lc.text)
                texts.extend(lc.subcaptions)
    counts = iter(count_tokens(texts, tokenizer))
    for s in samples:
        if not s.ok:
            continue
        if s.caption:
            s.caption_tokens = next(counts)
        for lc in s.long_captions:
            if lc.status == S.LONG_OK:
                lc.tokens = next(counts)
                lc.subcaption_tokens = [next(counts) for _ in lc.subcaptions]


def _prepared(
    batch: list[InputSample], cfg: AssembleConfig, seen: set[str], first_row: int
) -> list[S.Sample]:
    """A batch checked, split and counted, with safe unique keys (`seen` is updated)."""
    samples = [_to_sample(inp, cfg) for inp in batch]
    _count_batch(samples, cfg.tokenizer)
    for i, (inp, sample) in enumerate(zip(batch, samples, strict=True)):
        row = first_row + i
        sample.key = _UNSAFE_KEY.sub("_", sample.key) or f"row{row:09d}"
        if sample.key in seen:
            _fail(sample, S.FAIL_DUPLICATE_KEY, f"{inp.origin}: key seen before")
            sample.key = f"{sample.key}__dup{row:09d}"
        seen.add(sample.key)
    return samples


def completed_shards(out_dir: Path) -> list[dict[str, Any]]:
    """Stats of the finished shards of a previous run, in order; each covers input rows."""
    done = []
    for path in sorted(out_dir.glob("*_stats.json")):
        try:
            stats = json.loads(path.read_text())
        except ValueError as exc:
            raise InputError(
                f"{path}: unreadable shard stats ({exc}); delete it to rebuild"
            ) from exc
        done.append(stats)
    for i, stats in enumerate(done):
        if stats.get("shard") != f"{i:05d}" or "input_end" not in stats:
            raise InputError(
                f"{out_dir}: shard stats are not a contiguous run from 00000 made by "
                f"`longcap shards` (at {stats.get('shard')!r}); use an empty --out folder"
            )
    return done


def _remove_shard(out: Path, stats: dict[str, Any]) -> None:
    """Delete a finished shard, its completion mark first (a kill midway leaves no mark)."""
    (out / f"{stats['shard']}_stats.json").unlink(missing_ok=True)
    for name in stats.get("files", []):
        (out / name).unlink(missing_ok=True)


def _remove_unmarked(out, first: int) -> None:
    """Delete the data objects of shards from `first` on that have no mark: a killed run's
    uploads on an object store (locally its temps are removed by name, `remove_stale_temps`).
    The rerun would overwrite them; deleting them also covers a rerun that ends sooner."""
    if not storage.is_uri(out):
        return
    for path in out.glob("[0-9][0-9][0-9][0-9][0-9].*"):
        if path.suffix in (".parquet", ".tar") and int(path.stem) >= first:
            if not (out / f"{path.stem}_stats.json").exists():
                path.unlink(missing_ok=True)


def _keys_of(out: Path, stats: dict[str, Any]) -> list[str]:
    """Every key of a finished shard: its Parquet's, or a tar-only shard's ok keys from the tar
    plus the failed keys its stats record (failed samples are not in the tar)."""
    files = stats.get("files")
    if files is None or f"{stats['shard']}.parquet" in files:
        return read_shard_table(out / f"{stats['shard']}.parquet", ["key"])["key"].to_pylist()
    keys = list(stats.get("failed_keys", []))
    keys += [key for key, _members, _refused in _iter_groups(out / f"{stats['shard']}.tar")]
    return keys


def _batches(items: Iterable[InputSample], size: int) -> Iterator[list[InputSample]]:
    batch: list[InputSample] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def assemble(
    input_path: str | Path,
    out_dir: str | Path,
    cfg: AssembleConfig | None = None,
    force_rebuild: bool = False,
) -> AssembleResult:
    """Build output shards from any input `read_input` accepts; resumes a killed run.

    Holds the output folder's lock (`shards.runlock`) for the whole run. Finished shards made
    from another config or input stop the run (`FingerprintMismatch`) unless `force_rebuild`,
    which deletes them first."""
    cfg = cfg or AssembleConfig()
    cfg.validate()
    out = storage.as_path(out_dir)
    lock_output(out, "longcap shards")
    try:
        return _assemble(input_path, out, cfg, force_rebuild)
    finally:
        unlock_output(out)


def _assemble(
    input_path: str | Path, out: Path, cfg: AssembleConfig, force_rebuild: bool
) -> AssembleResult:
    remove_stale_temps(out)
    done = completed_shards(out)
    _remove_unmarked(out, len(done))
    source_id = str(storage.as_path(input_path).resolve())
    record = made_from(cfg.output_fields(), input_identity(input_path))
    try:
        for stats in done:
            if stats.get("input") != source_id:
                raise FingerprintMismatch(
                    f"{out}: holds shards built from {stats.get('input')}, not {source_id}; "
                    "use another --out folder, or --force-rebuild to replace them"
                )
            check_mark(stats, record, out / f"{stats['shard']}_stats.json")
    except FingerprintMismatch:
        if not force_rebuild:
            raise
        for stats in reversed(done):
            _remove_shard(out, stats)
        done = []
    skip = done[-1]["input_end"] if done else 0
    seen: set[str] = set()
    for stats in done:
        seen.update(_keys_of(out, stats))
    tar_only = "parquet" not in cfg.formats
    mark = {"made_from": record, "fingerprint": fingerprint(record)}
    writer = ShardWriter(
        out,
        max_samples=cfg.shard_size,
        max_bytes=cfg.max_shard_bytes,
        formats=cfg.formats,
        parquet_images=cfg.parquet_images,
        start_index=len(done),
        record_failed_keys=tar_only,
    )
    position = 0  # input rows consumed, counting the skipped ones
    shard_start = skip
    n_in = n_ok = 0

    join = None
    if cfg.captions:
        from shards.captions_join import CaptionJoin

        join = CaptionJoin(cfg.captions)

    def rows() -> Iterator[InputSample]:
        nonlocal position
        for inp in read_input(input_path, cfg.allow_paths_outside):
            position += 1
            if position > skip:
                if join is not None:
                    join.attach(inp)
                yield inp

    try:
        for batch in _batches(rows(), cfg.batch_size):
            for sample in _prepared(batch, cfg, seen, skip + n_in):
                writer.write(sample)
                n_in += 1
                n_ok += sample.ok
                if writer.shard_full():
                    end = skip + n_in
                    writer.close_shard(
                        input=source_id, input_start=shard_start, input_end=end, **mark
                    )
                    shard_start = end
        writer.close_shard(input=source_id, input_start=shard_start, input_end=skip + n_in, **mark)
    except BaseException:
        writer.abort()
        raise
    written = writer.written
    rows_written = sum(s["count"] for s in written)
    if rows_written != n_in:
        raise RuntimeError(f"conservation broken: {n_in} samples in, {rows_written} rows written")
    return AssembleResult(out, written, len(done), n_in, n_ok, n_in - n_ok)


def finished_shard(
    input_dir: str | Path,
    name: str,
    out_dir: str | Path,
    cfg: AssembleConfig,
    force_rebuild: bool = False,
) -> dict[str, Any] | None:
    """The stats of output shard `name` when it is finished and was made from this config and
    input shard; None when it is not there. One made from another raises FingerprintMismatch,
    or with `force_rebuild` is deleted (None)."""
    stats_path = storage.as_path(out_dir) / f"{name}_stats.json"
    if not stats_path.exists():
        return None
    stats = json.loads(stats_path.read_text())
    record = made_from(cfg.output_fields(), shard_files_identity(input_dir, name))
    try:
        check_mark(stats, record, stats_path)
        return stats
    except FingerprintMismatch:
        if not force_rebuild:
            raise
        _remove_shard(storage.as_path(out_dir), stats)
        return None


def assemble_shard(
    input_dir: str | Path,
    name: str,
    out_dir: str | Path,
    cfg: AssembleConfig | None = None,
    force_rebuild: bool = False,
) -> dict[str, Any]:
    """Assemble one input shard into the output shard of the same name (the build's unit).

    Finished when its stats file exists and records this config and input shard (else
    `FingerprintMismatch`, or a rebuild with `force_rebuild`); keys are unique within the shard
    (input shards from img2dataset never share keys). The caller holds the output's lock."""
    cfg = cfg or AssembleConfig()
    cfg.validate()
    out = storage.as_path(out_dir)
    record = made_from(cfg.output_fields(), shard_files_identity(input_dir, name))
    stats = finished_shard(input_dir, name, out, cfg, force_rebuild)
    if stats is not None:
        return stats
    out.mkdir(parents=True, exist_ok=True)
    join = None
    if cfg.captions:
        from shards.captions_join import CaptionJoin

        join = CaptionJoin(cfg.captions)
    from shards.readers import read_shard

    writer = ShardWriter(
        out,
        max_samples=1 << 62,
        max_bytes=1 << 62,
        formats=cfg.formats,
        parquet_images=cfg.parquet_images,
        start_index=int(name),
        record_failed_keys="parquet" not in cfg.formats,
    )
    seen: set[str] = set()
    n_in = 0
    try:
        inputs = read_shard(storage.as_path(input_dir), name)
        for batch in _batches(inputs, cfg.batch_size):
            if join is not None:
                for inp in batch:
                    join.attach(inp)
            for sample in _prepared(batch, cfg, seen, n_in):
                writer.write(sample)
                n_in += 1
        if writer.current is None:
            writer.write_empty()
        stats = writer.close_shard(
            input=str(storage.as_path(input_dir) / name),
            input_start=0,
            input_end=n_in,
            made_from=record,
            fingerprint=fingerprint(record),
        )
    except BaseException:
        writer.abort()
        raise
    return stats
