"""What a benchmark loader returns, and the checks that turn a wrong layout into a clear error.

A loader reads files only (no torch, no decoding): a retrieval set is image paths plus texts as
piece lists with the image each text belongs to; a classification set is image paths, labels and
the class names and prompt templates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class LayoutError(FileNotFoundError):
    """A benchmark folder that does not have its release's layout (names the path and what was
    expected there)."""


@dataclass
class RetrievalSet:
    """Images and texts; text t belongs to image `text_image[t]`."""

    name: str
    images: list[Path]
    texts: list[list[str]]
    text_image: list[int]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClassificationSet:
    """Images with class indices into `classnames`; classes are embedded from `templates`."""

    name: str
    images: list[Path]
    labels: list[int]
    classnames: list[str]
    templates: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise LayoutError(f"{path}: no such folder; expected {what}")
    return path


def need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise LayoutError(f"{path}: no such file; expected {what}")
    return path


def read_json(path: Path, what: str) -> Any:
    need_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf8"))
    except json.JSONDecodeError as e:
        raise LayoutError(f"{path}: not valid JSON ({e}); expected {what}") from e


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    need_file(path, what)
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LayoutError(f"{path}:{n}: not a JSON line ({e}); expected {what}") from e
    return rows


def field_of(row: dict[str, Any], key: str, where: str) -> Any:
    if key not in row:
        raise LayoutError(f"{where}: no key {key!r} (has {sorted(row)[:8]})")
    return row[key]


def check_images(paths: list[Path], benchmark: str) -> None:
    """Every image file exists; the error names the first missing ones."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise LayoutError(
            f"{benchmark}: {len(missing)} of {len(paths)} images missing, e.g. {shown}; "
            "see docs/EVAL.md for the layout"
        )


def cap(items: list, max_samples: int | None) -> list:
    return items[:max_samples] if max_samples else items
