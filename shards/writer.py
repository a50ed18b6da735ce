"""Writers of output shards: `NNNNN.parquet` and `NNNNN.tar` side by side, plus `NNNNN_stats.json`.

Each file is written under a temporary name and renamed when complete; the stats file is renamed
last and is the shard's completion mark, so a reader (or a resumed run) never sees half a shard.
Shards rotate by sample count and by bytes. The tar is a webdataset shard as open_clip reads it:
`KEY.<ext>` image, `KEY.txt` raw caption, `KEY.json` everything else; only "ok" samples go in it.
The Parquet file holds every sample, failed ones with their status and error.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards.schema import Sample, output_schema
from shards.stats import ShardStats

FORMATS = ("parquet", "tar")
_EXT = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "bmp": "bmp"}


def shard_name(index: int) -> str:
    return f"{index:05d}"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # same input, same bytes
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


class _OpenShard:
    """The files of one shard while it is being written."""

    def __init__(self, out_dir: Path, index: int, formats: tuple[str, ...], images: bool):
        self.index = index
        self.base = out_dir / shard_name(index)
        self.stats = ShardStats()
        self.rows: list[dict[str, Any]] = []
        self.bytes = 0
        self.images = images
        self.schema = output_schema(with_images=images)
        self.parquet: pq.ParquetWriter | None = None
        self.tar: tarfile.TarFile | None = None
        if "parquet" in formats:
            self.parquet_tmp = self.base.with_name(self.base.name + ".parquet.tmp")
            self.parquet = pq.ParquetWriter(self.parquet_tmp, self.schema, compression="zstd")
        if "tar" in formats:
            self.tar_tmp = self.base.with_name(self.base.name + ".tar.tmp")
            self.tar = tarfile.open(self.tar_tmp, "w", format=tarfile.USTAR_FORMAT)

    def write(self, sample: Sample, row_group_size: int) -> None:
        self.stats.add(sample)
        if self.parquet is not None:
            self.rows.append(sample.to_row(with_image=self.images))
            if len(self.rows) >= row_group_size:
                self._flush_rows()
        if self.tar is not None and sample.ok:
            ext = _EXT.get((sample.image_format or "jpg").lower(), "jpg")
            if sample.image is not None:
                _add_member(self.tar, f"{sample.key}.{ext}", sample.image)
            _add_member(self.tar, f"{sample.key}.txt", (sample.caption or "").encode("utf-8"))
            meta = json.dumps(sample.metadata(), ensure_ascii=False, sort_keys=True)
            _add_member(self.tar, f"{sample.key}.json", meta.encode("utf-8"))
        self.bytes += len(sample.image or b"") * (1 + (self.images and self.parquet is not None))

    def _flush_rows(self) -> None:
        if self.rows and self.parquet is not None:
            self.parquet.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self, extra_stats: dict[str, Any]) -> dict[str, Any]:
        files = []
        if self.parquet is not None:
            self._flush_rows()
            if self.stats.count == 0:
                self.parquet.write_table(self.schema.empty_table())
            self.parquet.close()
            os.replace(self.parquet_tmp, self.base.with_suffix(".parquet"))
            files.append(self.base.name + ".parquet")
        if self.tar is not None:
            self.tar.close()
            os.replace(self.tar_tmp, self.base.with_suffix(".tar"))
            files.append(self.base.name + ".tar")
        stats = {"shard": self.base.name, "files": files, **extra_stats, **self.stats.to_json()}
        path = self.base.with_name(self.base.name + "_stats.json")
        _atomic_write_bytes(path, json.dumps(stats, indent=1).encode("utf-8"))
        return stats

    def abort(self) -> None:
        """Drop the temporary files of an unfinished shard."""
        if self.parquet is not None:
            self.parquet.close()
            self.parquet_tmp.unlink(missing_ok=True)
        if self.tar is not None:
            self.tar.close()
            self.tar_tmp.unlink(missing_ok=True)


class ShardWriter:
    """Writes samples into numbered shards, rotating by sample count and by image bytes.

    `on_shard_done(stats)` is called after each shard is complete on disk. `extra_stats()` may
    return fields recorded in the next shard's stats (e.g. the input rows it covers, for resume).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        max_samples: int = 10_000,
        max_bytes: int = 1 << 30,
        formats: tuple[str, ...] | list[str] = FORMATS,
        parquet_images: bool = True,
        start_index: int = 0,
        row_group_size: int = 1000,
    ):
        unknown = set(formats) - set(FORMATS)
        if unknown or not formats:
            raise ValueError(f"formats: {sorted(unknown) or formats} not among {FORMATS}")
        if max_samples < 1 or max_bytes < 1:
            raise ValueError("max_samples and max_bytes must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.formats = tuple(formats)
        self.parquet_images = parquet_images
        self.row_group_size = row_group_size
        self.next_index = start_index
        self.current: _OpenShard | None = None
        self.written: list[dict[str, Any]] = []

    def write(self, sample: Sample) -> None:
        if self.current is None:
            self.current = _OpenShard(
                self.out_dir, self.next_index, self.formats, self.parquet_images
            )
            self.next_index += 1
        self.current.write(sample, self.row_group_size)

    def write_empty(self) -> None:
        """Open the next shard without a sample: an empty input shard still gets its files."""
        if self.current is None:
            self.current = _OpenShard(
                self.out_dir, self.next_index, self.formats, self.parquet_images
            )
            self.next_index += 1

    def shard_full(self) -> bool:
        cur = self.current
        return cur is not None and (
            cur.stats.count >= self.max_samples or cur.bytes >= self.max_bytes
        )

    def close_shard(self, **extra_stats: Any) -> dict[str, Any] | None:
        """Finish the open shard (if any) and return its stats."""
        if self.current is None:
            return None
        stats = self.current.close(extra_stats)
        self.current = None
        self.written.append(stats)
        return stats

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()
            self.current = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close_shard()
        else:
            self.abort()
