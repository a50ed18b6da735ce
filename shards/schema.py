"""The one Arrow schema of longcap's output shards, versioned.

Every writer and reader goes through this module, so a change of layout is a change of
SCHEMA_VERSION here and in docs/FORMAT.md. The Parquet file of a shard holds every input sample,
failed ones included (as img2dataset does), so that per shard: samples in = rows = ok + failed.
The webdataset tar holds only the samples whose status is "ok".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 2
SCHEMA_METADATA_KEY = b"longcap.schema_version"

STATUS_OK = "ok"

# Failure reasons recorded in a sample's `status` (the free text goes to `error`).
FAIL_DOWNLOAD = "failed_to_download"  # carried over from img2dataset
FAIL_RESIZE = "failed_to_resize"  # carried over from img2dataset
FAIL_IMAGE_MISSING = "image_missing"
FAIL_IMAGE_DECODE = "image_decode_error"
FAIL_CAPTION_EMPTY = "empty_caption"
FAIL_CAPTION_ENCODING = "caption_not_utf8"
FAIL_INPUT = "bad_input_row"
FAIL_DUPLICATE_KEY = "duplicate_key"
FAIL_IMAGE_LIMIT = "image_over_limits"  # shards.limits: pixel or aspect-ratio cap
FAIL_TAR_MEMBER = "tar_member_refused"  # sparse, link, device or oversized tar member
FAIL_KEY_UNSTORABLE = "key_not_storable"  # a key the tar writer cannot store
FAIL_PATH_OUTSIDE = "path_outside_root"  # a manifest's image path outside the manifest's folder
FAIL_URL_NOT_UTF8 = "url_not_utf8"
# A URL the ingest policy does not fetch (pipeline/url_policy.py): the status is the prefix and
# one word, e.g. url_refused:scheme, url_refused:address, url_refused:size, url_refused:deadline.
URL_REFUSED_PREFIX = "url_refused:"


def url_refusal(error: object) -> str | None:
    """`url_refused:<reason>` when a download error text is a policy refusal (img2dataset can
    only report it as text: "url_refused:address: ..."), else None."""
    if not isinstance(error, str) or not error.startswith(URL_REFUSED_PREFIX):
        return None
    reason = error[len(URL_REFUSED_PREFIX) :].split(":", 1)[0].strip()
    return URL_REFUSED_PREFIX + reason if reason.isidentifier() else None


# Status of one long caption (one model's text for one image).
LONG_OK = "ok"
LONG_EMPTY = "empty"
LONG_NOT_UTF8 = "not_utf8"

LONG_CAPTION_TYPE = pa.struct(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("text", pa.string()),
        pa.field("status", pa.string()),
        pa.field("finish_reason", pa.string()),
        pa.field("generated_tokens", pa.int32()),
        pa.field("flags", pa.list_(pa.string())),
        pa.field("tokens", pa.int32()),
        pa.field("subcaptions", pa.list_(pa.string())),
        pa.field("subcaption_tokens", pa.list_(pa.int32())),
    ]
)

SHORT_CAPTION_TYPE = pa.struct(
    [pa.field("model", pa.string(), nullable=False), pa.field("text", pa.string())]
)

_FIELDS = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("url", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("image_format", pa.string()),
    pa.field("sha256", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("caption_tokens", pa.int32()),
    pa.field("caption_subcaptions", pa.int32()),
    pa.field("long_captions", pa.list_(LONG_CAPTION_TYPE)),
    pa.field("short_captions", pa.list_(SHORT_CAPTION_TYPE)),
    # A sample's known content as JSON text (toyworld scenes), null where the input has none.
    pa.field("truth", pa.string()),
    pa.field("image", pa.binary()),
]

# Columns a shard of an older schema version may lack: name -> the version that added it.
# A reader treats such a column as all null in older shards.
ADDED_IN_VERSION = {"truth": 2}

# Columns that describe a sample without its pixels: what `longcap stats` may read.
METADATA_COLUMNS = [f.name for f in _FIELDS if f.name != "image"]


def output_schema(with_images: bool = True) -> pa.Schema:
    """The Arrow schema of an output shard's Parquet file (images optional)."""
    fields = _FIELDS if with_images else [f for f in _FIELDS if f.name != "image"]
    return pa.schema(fields, metadata={SCHEMA_METADATA_KEY: str(SCHEMA_VERSION).encode()})


@dataclass
class LongCaption:
    """One model's long caption of one image, with its sub-captions and token counts."""

    model: str
    text: str
    prompt: str | None = None
    status: str = LONG_OK
    finish_reason: str | None = None
    generated_tokens: int | None = None
    flags: list[str] = field(default_factory=list)
    tokens: int | None = None
    subcaptions: list[str] = field(default_factory=list)
    subcaption_tokens: list[int] = field(default_factory=list)


@dataclass
class Sample:
    """One output row. `image` holds the encoded bytes as found in the input (never re-encoded)."""

    key: str
    status: str = STATUS_OK
    error: str | None = None
    source: str | None = None
    url: str | None = None
    width: int | None = None
    height: int | None = None
    image_format: str | None = None
    sha256: str | None = None
    caption: str | None = None
    caption_tokens: int | None = None
    caption_subcaptions: int | None = None
    long_captions: list[LongCaption] = field(default_factory=list)
    short_captions: list[dict[str, str]] = field(default_factory=list)
    truth: str | None = None
    image: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def to_row(self, with_image: bool = True) -> dict[str, Any]:
        row = asdict(self)
        if not with_image:
            row.pop("image")
        return row

    def metadata(self) -> dict[str, Any]:
        """Everything but the image: the content of the tar's KEY.json."""
        row = asdict(self)
        row.pop("image")
        return row


def check_schema_version(schema: pa.Schema, where: str) -> None:
    """Raise a clear error when a Parquet file is not a longcap shard of a version we read."""
    meta = schema.metadata or {}
    version = meta.get(SCHEMA_METADATA_KEY)
    if version is None:
        raise ValueError(
            f"{where}: not a longcap shard (no '{SCHEMA_METADATA_KEY.decode()}' in the Parquet "
            "schema metadata); build it with `longcap shards`"
        )
    if int(version) > SCHEMA_VERSION:
        raise ValueError(
            f"{where}: shard schema version {int(version)} is newer than this longcap "
            f"(reads up to {SCHEMA_VERSION}); upgrade longcap"
        )
    missing = [
        f.name
        for f in _FIELDS
        if f.name != "image"
        and f.name not in schema.names
        and ADDED_IN_VERSION.get(f.name, 1) <= int(version)
    ]
    if missing:
        raise ValueError(f"{where}: longcap shard is missing columns {missing}")
