"""Small builders for test inputs: images, manifests, img2dataset-style shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def jpeg_bytes(color=(200, 30, 30), size=(32, 24)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def png_bytes(size=(20, 20)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (0, 128, 0)).save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_i2d_shard(folder: Path, name: str, ok: list[dict], failed: list[dict]) -> None:
    """An img2dataset-style shard: tar of ok samples, sidecar parquet of all, stats json."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / f"{name}.tar", "w") as tar:
        for s in ok:
            add_member(tar, f"{s['key']}.jpg", s["jpg"])
            add_member(tar, f"{s['key']}.txt", s["caption"].encode())
            meta = {"key": s["key"], "url": s["url"], "caption": s["caption"], "status": "success"}
            meta.update(s.get("extra", {}))
            add_member(tar, f"{s['key']}.json", json.dumps(meta).encode())
    rows = [
        {
            "key": s["key"],
            "url": s["url"],
            "caption": s["caption"],
            "status": "success",
            "error_message": None,
        }
        for s in ok
    ] + [
        {
            "key": f["key"],
            "url": f["url"],
            "caption": f.get("caption"),
            "status": f["status"],
            "error_message": f["error"],
        }
        for f in failed
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")
    stats = {"count": len(rows), "successes": len(ok), "failed_to_download": len(failed)}
    (folder / f"{name}_stats.json").write_text(json.dumps(stats))
