"""What a finished output was made from, recorded in its completion mark, and checked on a rerun.

A shard's `_stats.json` is its completion mark: a rerun skips the shard. That is only right when
the rerun would make the same shard, so the mark records `made_from`: the config fields that
change the output, the caps of `shards.limits`, the schema version, and the input's identity
(size and modification time of the manifest, or of each file directly in an input folder; of the
input shard's files for a build). `fingerprint` is a hash of it. A rerun whose `made_from`
differs stops with `FingerprintMismatch` naming what changed, unless the user asks to rebuild
(`--force-rebuild`). Marks without a fingerprint (made before it existed) are accepted with a
warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from shards import limits, storage
from shards import schema as S
from shards.inputs import InputError

log = logging.getLogger(__name__)


class FingerprintMismatch(InputError):
    """A finished output was made from another config or input than this run's."""


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """Size and modification time (ns) of a file: cheap, and changed by any rewrite."""
    st = storage.as_path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def shard_files_identity(root: str | os.PathLike, shard: str) -> dict[str, Any]:
    """Identity of one input shard: size and time of its `NNNNN.tar` and `NNNNN.parquet`."""
    return {
        f"{shard}{ext}": file_identity(storage.as_path(root) / f"{shard}{ext}")
        for ext in (".tar", ".parquet")
        if (storage.as_path(root) / f"{shard}{ext}").exists()
    }


def input_identity(path: str | os.PathLike) -> dict[str, Any]:
    """A manifest's identity, or a folder's: a hash of the names, sizes and times of the files
    directly in it (shards of img2dataset or longcap, or the top level of an image folder)."""
    p = storage.as_path(path)
    if not p.is_dir():
        return {"path": str(p.resolve()), **file_identity(p)}
    h = hashlib.sha256()
    for child in sorted(p.iterdir()):
        if child.is_file() and not child.name.endswith(".tmp"):
            st = child.stat()
            h.update(f"{child.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": str(p.resolve()), "listing_sha256": h.hexdigest()}


def made_from(config: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The `made_from` record of an output: config fields, caps, schema version, input."""
    return {
        "config": config,
        "limits": {
            "max_image_pixels": limits.MAX_IMAGE_PIXELS,
            "max_aspect_ratio": limits.MAX_ASPECT_RATIO,
            "max_member_bytes": limits.MAX_MEMBER_BYTES,
        },
        "schema_version": S.SCHEMA_VERSION,
        "input": inputs,
    }


def fingerprint(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if old == new else [f"{where}: was {old!r}, now {new!r}"]


def check_mark(mark: dict[str, Any], record: dict[str, Any], mark_path: Path) -> None:
    """Raise FingerprintMismatch when a completion mark was made from something else."""
    if "fingerprint" not in mark:
        log.warning("%s: made before fingerprints were recorded; reused as it is", mark_path)
        return
    if mark["fingerprint"] == fingerprint(record):
        return
    diffs = _differences(mark.get("made_from") or {}, record) or ["(fingerprint only)"]
    raise FingerprintMismatch(
        f"{mark_path}: this finished output was made from another config or input "
        f"({'; '.join(diffs[:5])}{'; ...' if len(diffs) > 5 else ''}). Rerun with "
        "--force-rebuild to delete it and rebuild, or write to another output folder"
    )
