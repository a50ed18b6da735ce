"""What every reader yields: `InputSample`, and the errors and text helpers they share."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shards import schema as S

# Column names of LoTLIP/DreamLIP's released caption CSVs, and the model each one names.
RELEASED_LONG_COLUMNS = {
    "longIB_captions": "instructblip",
    "longSV_captions": "sharegpt4v",
    "longLLA_captions": "llava-1.5",
}
RELEASED_SHORT_COLUMNS = {
    "shortIB_captions": "instructblip",
    "shortSV_captions": "sharegpt4v",
    "shortLLA_captions": "llava-1.5",
}

# Columns of a URL list or manifest carried unchanged to the output shards (besides captions):
# `truth`, a sample's known content as JSON (toyworld scenes), for scoring captions against it.
TRUTH_COLUMN = "truth"


class InputError(ValueError):
    """The input as a whole cannot be read; the message names the file and the problem."""


@dataclass
class InputSample:
    """One input row before assembly. Text may hold lone surrogates where bytes were not UTF-8."""

    key: str
    origin: str  # "file:line" or "file:member", for messages
    status: str = S.STATUS_OK
    error: str | None = None
    source: str | None = None
    url: str | None = None
    caption: str | None = None
    long_captions: dict[str, dict[str, Any]] = field(default_factory=dict)
    short_captions: dict[str, str] = field(default_factory=dict)
    truth: str | None = None  # JSON text of what the image shows, where known
    image: bytes | None = None
    image_path: Path | None = None
    image_format: str | None = None
    shard: str | None = None  # the input shard it came from (shard folders only)


def as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # pandas NaN for an empty CSV cell
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="surrogateescape")
    if isinstance(value, list | tuple):
        parts = [t for t in (as_text(v) for v in value) if t]
        return "\n".join(parts) if parts else None
    return str(value)


def truth_text(value: Any) -> str | None:
    """A `truth` cell as JSON text: a JSON object as given (JSONL, Parquet struct) is serialised
    with sorted keys; text (CSV, img2dataset's json member) is kept as it is; an empty cell is
    None (a URL list's row without truth)."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    text = as_text(value)
    return text if text and text.strip() else None


def long_entry(value: Any) -> dict[str, Any] | None:
    """A manifest's long caption: a string, or a dict with text and generation details."""
    if isinstance(value, dict):
        entry = dict(value)
        entry["text"] = as_text(entry.get("text"))
        return entry
    text = as_text(value)
    return None if text is None else {"text": text}


# The largest image file a manifest may point at: a bigger one is refused before it is read.
MAX_IMAGE_FILE_BYTES = 256 << 20
MAX_CAPTION_FILE_BYTES = 1 << 20  # an image folder's .txt caption


def read_file_capped(path: Path, max_bytes: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most `max_bytes`; OSError for anything else. Opened without
    blocking (a fifo) and checked on the open descriptor (a device such as /dev/zero, a file
    swapped after a check), then read no further than the cap (a file still growing)."""
    try:
        mode = os.stat(path).st_mode
    except ValueError as exc:  # a NUL byte in the path: no file can have that name
        raise OSError(f"not a valid path ({exc})") from None
    if not stat.S_ISREG(mode):  # some devices act on open: do not open them
        raise OSError("not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError("not a regular file")
        if st.st_size > max_bytes:
            raise OSError(f"{st.st_size} bytes is over the file cap of {max_bytes}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"over the file cap of {max_bytes} bytes")
    return data


def load_image_bytes(sample: InputSample) -> tuple[bytes | None, str | None]:
    """The sample's encoded image (from the input, or read from its path), or (None, reason)."""
    if sample.image is not None:
        return sample.image, None
    if sample.image_path is not None:
        try:
            return read_file_capped(Path(sample.image_path)), None
        except OSError as exc:
            why = exc.strerror or str(exc)
            return None, f"{sample.origin}: {sample.image_path}: {why}"
    return None, f"{sample.origin}: no image"
