"""Readers of the inputs a user has: manifests, img2dataset output, longcap shards, image folders.

Every reader yields `InputSample`s in a deterministic order. A bad row (unparsable line, missing
image, bytes that are not UTF-8) becomes an InputSample with a failure status and a reason that
names the file and line; only a whole-input problem (no such file, a missing column, a Parquet
file with the wrong schema) raises `InputError`, naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from shards import schema as S
from shards import storage
from shards.inputs import (
    MAX_CAPTION_FILE_BYTES,
    RELEASED_LONG_COLUMNS,
    RELEASED_SHORT_COLUMNS,
    TRUTH_COLUMN,
    InputError,
    InputSample,
    as_text,
    long_entry,
    read_file_capped,
    truth_text,
)
from shards.tar_reader import IMAGE_EXTS, iter_tar_samples

KEY_COLUMNS = ("key",)
IMAGE_COLUMNS = ("image_path", "Image Path", "image", "filepath", "file_name", "path")
CAPTION_COLUMNS = ("caption", "raw_caption", "text", "title")


def _first(columns: list[str] | set[str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in columns), None)


def sample_from_record(
    rec: dict[str, Any],
    *,
    index: int,
    origin: str,
    base_dir: Path,
    source: str,
    allow_outside: bool = False,
    guard: RootGuard | None = None,
) -> InputSample:
    """Turn one manifest record (any accepted column naming) into an InputSample.

    An image path must lie inside `base_dir` (the manifest's folder) once `..` and symbolic
    links are resolved, unless `allow_outside`; one that does not is a `path_outside_root`
    failure, decided from the text and links alone: the file is never opened, and the error
    is the same whether it exists or not."""
    cols = set(rec)
    key_col = _first(cols, KEY_COLUMNS)
    key = as_text(rec.get(key_col)) if key_col else None
    sample = InputSample(key=key or f"{index:09d}", origin=origin)
    sample.source = as_text(rec.get("source")) or source
    sample.url = as_text(rec.get("url"))
    sample.truth = truth_text(rec.get(TRUTH_COLUMN))
    cap_col = _first(cols, CAPTION_COLUMNS)
    sample.caption = as_text(rec.get(cap_col)) if cap_col else None
    longs = rec.get("long_captions")
    if isinstance(longs, dict):
        for model, value in longs.items():
            entry = long_entry(value)
            if entry is not None:
                sample.long_captions[str(model)] = entry
    elif longs is not None and not (isinstance(longs, float) and longs != longs):
        sample.status, sample.error = S.FAIL_INPUT, f"{origin}: long_captions is not an object"
    for col, model in RELEASED_LONG_COLUMNS.items():
        entry = long_entry(rec.get(col))
        if entry is not None:
            sample.long_captions[model] = entry
    for col, model in RELEASED_SHORT_COLUMNS.items():
        text = as_text(rec.get(col))
        if text:
            sample.short_captions[model] = text
    img_col = _first(cols, IMAGE_COLUMNS)
    path_text = as_text(rec.get(img_col)) if img_col else None
    if path_text:
        path = Path(path_text)
        sample.image_path = path if path.is_absolute() else base_dir / path
        sample.image_format = path.suffix.lstrip(".").lower() or None
        if not allow_outside and not (guard or RootGuard(base_dir))(sample.image_path):
            sample.image_path = None
            if sample.status == S.STATUS_OK:
                sample.status = S.FAIL_PATH_OUTSIDE
                sample.error = (
                    f"{origin}: image path {path_text!r} is outside the manifest's folder; "
                    "pass --allow-paths-outside to read it"
                )
    elif sample.status == S.STATUS_OK:
        sample.status = S.FAIL_IMAGE_MISSING
        sample.error = f"{origin}: no image path in column {img_col or IMAGE_COLUMNS[0]!r}"
    return sample


class RootGuard:
    """Whether a path resolves (.., symbolic links) to a place under `root`, for one reading of
    one manifest. The real path of each folder is cached (a manifest names the same folders
    over and over, and resolving every component of every path costs one lstat each); the last
    component is still checked for a link every time."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._dirs: dict[str, str] = {}

    def __call__(self, path: Path) -> bool:
        try:
            text = os.fspath(path)
            folder, name = os.path.split(text)
            if name in ("", ".", ".."):
                real = os.path.realpath(text)
            else:
                real_dir = self._dirs.get(folder)
                if real_dir is None:
                    real_dir = self._dirs[folder] = os.path.realpath(folder or ".")
                real = os.path.join(real_dir, name)
                if os.path.islink(real):
                    real = os.path.realpath(real)
        except (OSError, ValueError):  # a NUL byte, a link loop: not a path to read
            return False
        return real == self.root or real.startswith(self._prefix)


def _check_columns(columns: list[str], path: Path) -> None:
    if not _first(columns, IMAGE_COLUMNS):
        raise InputError(
            f"{path}: manifest has no image column (one of {list(IMAGE_COLUMNS)}); "
            f"its columns are {sorted(columns)}"
        )
    has_text = _first(columns, CAPTION_COLUMNS) or "long_captions" in columns
    if not has_text and not set(RELEASED_LONG_COLUMNS) & set(columns):
        raise InputError(
            f"{path}: manifest has no caption column (one of {list(CAPTION_COLUMNS)}, "
            f"'long_captions' or {list(RELEASED_LONG_COLUMNS)}); its columns are {sorted(columns)}"
        )


def read_jsonl(path: Path, allow_outside: bool = False) -> Iterator[InputSample]:
    source = path.stem
    root = Path(os.path.realpath(path.parent))
    guard = RootGuard(root)
    columns_checked = False
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            origin = f"{path}:{lineno}"
            text = raw.decode("utf-8", errors="surrogateescape")
            try:
                rec = json.loads(text)
                if not isinstance(rec, dict):
                    raise ValueError("a JSON object per line is expected")
            except ValueError as exc:
                yield InputSample(
                    key=f"line{lineno:09d}",
                    origin=origin,
                    status=S.FAIL_INPUT,
                    error=f"{origin}: unparsable JSON line ({exc})",
                )
                continue
            if not columns_checked:
                _check_columns(list(rec), path)
                columns_checked = True
            yield sample_from_record(
                rec,
                index=lineno - 1,
                origin=origin,
                base_dir=root,
                source=source,
                allow_outside=allow_outside,
                guard=guard,
            )


def read_table_manifest(path: Path, allow_outside: bool = False) -> Iterator[InputSample]:
    """CSV, TSV or Parquet manifest, read in batches so a large file never sits in memory."""
    source = path.stem
    root = Path(os.path.realpath(path.parent))
    guard = RootGuard(root)
    if path.suffix == ".parquet":
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
        _check_columns(pf.schema_arrow.names, path)
        batches = (b.to_pylist() for b in pf.iter_batches(batch_size=4096))
    else:
        import pandas as pd

        sep = "\t" if path.suffix in (".tsv", ".tab") else ","
        try:
            reader = pd.read_csv(
                path,
                sep=sep,
                chunksize=4096,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8",
                encoding_errors="surrogateescape",
            )
            head = next(reader, None)
        except Exception as exc:
            raise InputError(f"{path}: not a readable {sep!r}-separated file ({exc})") from exc
        if head is None:
            return
        _check_columns(list(head.columns), path)

        def chunks():
            yield head
            yield from reader

        batches = (
            [{k: (v if v != "" else None) for k, v in r.items()} for r in c.to_dict("records")]
            for c in chunks()
        )
    index = 0
    for batch in batches:
        for rec in batch:
            # Line numbers count the header line, as an editor shows them.
            origin = f"{path}:{index + 2}" if path.suffix != ".parquet" else f"{path}:row {index}"
            yield sample_from_record(
                rec,
                index=index,
                origin=origin,
                base_dir=root,
                source=source,
                allow_outside=allow_outside,
                guard=guard,
            )
            index += 1


def read_image_folder(root: Path, allow_outside: bool = False) -> Iterator[InputSample]:
    """A folder of images, each with an optional same-named .txt caption. An image or caption
    that is a link out of the folder is a `path_outside_root` failure unless `allow_outside`;
    a caption file is read only when regular and at most MAX_CAPTION_FILE_BYTES."""
    guard = RootGuard(root)
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTS):
        rel = path.relative_to(root).with_suffix("")
        sample = InputSample(
            key=str(rel).replace("/", "_"),
            origin=str(path),
            source=root.name,
            image_path=path,
            image_format=path.suffix.lstrip(".").lower(),
        )
        txt = path.with_suffix(".txt")
        outside = [p.name for p in (path, txt) if p.is_symlink() and not guard(p)]
        if outside and not allow_outside:
            sample.image_path = None
            sample.status = S.FAIL_PATH_OUTSIDE
            sample.error = (
                f"{path}: {' and '.join(outside)} links outside the folder; "
                "pass --allow-paths-outside to read it"
            )
        elif txt.exists() or txt.is_symlink():
            try:
                data = read_file_capped(txt, MAX_CAPTION_FILE_BYTES)
                sample.caption = data.decode("utf-8", "surrogateescape")
            except OSError as exc:
                sample.status = S.FAIL_INPUT
                sample.error = f"{txt}: caption file not read ({exc.strerror or exc})"
        yield sample


def _is_longcap_shard(parquet: Path) -> bool:
    try:
        meta = pq.read_schema(storage.random_access(parquet)).metadata or {}
    except Exception as exc:
        raise InputError(f"{parquet}: not a readable Parquet file ({exc})") from exc
    return S.SCHEMA_METADATA_KEY in meta


def shard_names(root: Path) -> list[str]:
    """Names (NNNNN) of the shards in a folder of img2dataset output or longcap shards."""
    names = sorted({p.stem for p in root.glob("*.tar")} | {p.stem for p in root.glob("*.parquet")})
    if not names:
        raise InputError(f"{root}: no .tar or .parquet shards in this folder")
    return names


def read_shard(root: Path, name: str) -> Iterator[InputSample]:
    """The samples of one shard: `name`.tar with `name`.parquet beside it, either may be absent."""
    tar, parquet = root / f"{name}.tar", root / f"{name}.parquet"
    if parquet.exists() and _is_longcap_shard(parquet):
        from shards.shard_reader import read_longcap_shard

        samples = read_longcap_shard(parquet, tar if tar.exists() else None)
    else:
        samples = iter_tar_samples(
            tar if tar.exists() else None, parquet if parquet.exists() else None, root.name
        )
    for sample in samples:
        sample.shard = name
        yield sample


def read_shard_folder(root: Path) -> Iterator[InputSample]:
    """img2dataset output or longcap shards: NNNNN.tar with NNNNN.parquet beside it."""
    for name in shard_names(root):
        yield from read_shard(root, name)


def read_input(path: str | Path, allow_paths_outside: bool = False) -> Iterator[InputSample]:
    """Open whatever the user pointed at: a manifest file or a folder of shards or images.

    A manifest's image paths must lie inside its folder unless `allow_paths_outside`."""
    p = storage.as_path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        if any(p.glob("*.tar")) or any(p.glob("*.parquet")):
            return read_shard_folder(p)
        if storage.is_uri(p):
            raise InputError(f"{p}: no .tar or .parquet shards under this prefix")
        return read_image_folder(p, allow_paths_outside)
    if storage.is_uri(p):
        # A manifest names image files relative to its folder; that is a local layout.
        raise InputError(
            f"{p}: from object storage, give a prefix of shards (NNNNN.tar / NNNNN.parquet); "
            "copy a manifest and its images to a local folder, or ingest them into shards first"
        )
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(p, allow_paths_outside)
    if suffix in (".csv", ".tsv", ".tab", ".parquet"):
        return read_table_manifest(p, allow_paths_outside)
    raise InputError(
        f"{p}: unknown manifest type {suffix!r}; use .jsonl, .csv, .tsv or .parquet, or a folder"
    )
