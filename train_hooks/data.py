"""Streaming longcap's output shards into training batches (tar or Parquet), resumably.

Layout of the stream: every (DDP rank, DataLoader worker) pair is a *slot*. A slot reads an
endless sequence of epochs; each epoch shuffles the shard order with (seed, epoch). With at least
as many non-empty shards as slots, slot s reads shards s, s + S, ... of that order (disjoint files,
no wasted I/O); with fewer, every slot reads all shards and keeps samples i with i % S == s,
counting across epochs (disjoint samples, and a dataset smaller than a batch still fills batches).
Records go through a per-slot shuffle buffer and are cut into batches inside the slot, so a
DataLoader with batch_size=None hands out whole batches, worker by worker in turn.

Resume: the only data position is the number of batches each rank has consumed, p. Worker w of W
gives batches w, w + W, ... of the round-robin; after a restart, physical worker i plays the
logical worker (i + p) % W and skips the batches that logical worker already gave. Skipped
records are never decoded: image decoding, text construction (seeded per sample by
(seed, epoch, key)) and tokenizing happen only for batches that are kept.

A batch holds `pixels` [B, 3, S, S], `short_ids`/`short_mask` [1 + n, B, L] (the raw caption,
then n MLLM short captions) and `long_ids`/`long_mask` [T, B, L] (T long texts built by
train_hooks/sampling.training_texts).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from shards import storage
from shards.limits import ImageLimitError
from train_hooks.sampling import (
    ACROSS_MODELS,
    FILL,
    TextSpec,
    sample_seed,
    short_texts,
    training_texts,
)
from train_hooks.tokenizer import CornerTokenizer

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class Shard:
    """One output shard: its Parquet and/or tar file and how many ok samples it holds."""

    name: str
    parquet: storage.AnyPath | None  # a local Path, or an ObjectPath (s3://...)
    tar: storage.AnyPath | None
    count: int


def _count_ok(stem: Path) -> int:
    stats = stem.with_name(stem.name + "_stats.json")
    if stats.is_file():
        return int(json.loads(stats.read_text()).get("successes", 0))
    pqf = stem.with_suffix(".parquet")
    if pqf.is_file():
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        return int(
            pc.sum(
                pc.equal(
                    pq.read_table(storage.random_access(pqf), columns=["status"])["status"], "ok"
                )
            ).as_py()
            or 0
        )
    with storage.open_tar(stem.with_suffix(".tar")) as tf:
        return sum(1 for m in tf if m.name.endswith(".json"))


def list_shards(folder: str | Path) -> list[Shard]:
    """The shards of a longcap output folder, sorted by name; an error when there are none."""
    root = storage.as_path(folder)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such folder of shards (build one with `longcap shards`)"
        )
    stems = sorted(
        {p.with_suffix("") for p in root.glob("*.parquet")}
        | {p.with_suffix("") for p in root.glob("*.tar")}
    )
    out = []
    for stem in stems:
        pqf, tar = stem.with_suffix(".parquet"), stem.with_suffix(".tar")
        out.append(
            Shard(
                stem.name,
                pqf if pqf.is_file() else None,
                tar if tar.is_file() else None,
                _count_ok(stem),
            )
        )
    if not out:
        raise FileNotFoundError(
            f"{root}: no .parquet or .tar shards (build them with `longcap shards`)"
        )
    return out


def _record(meta: dict[str, Any], image: bytes | None, label_field: str | None) -> dict[str, Any]:
    return {
        "key": str(meta["key"]),
        "caption": meta.get("caption") or "",
        "long_captions": meta.get("long_captions") or [],
        "short_captions": meta.get("short_captions") or [],
        "image": image,
        "label": meta.get(label_field) if label_field else None,
    }


def read_tar(path: Path, label_field: str | None = None) -> Iterator[dict[str, Any]]:
    """Records of a webdataset tar (KEY.jpg|png, KEY.json, KEY.txt), streamed in file order."""
    key, parts = None, {}

    def emit():
        meta = json.loads(parts["json"]) if "json" in parts else {"key": key}
        meta.setdefault("key", key)
        if "txt" in parts and not meta.get("caption"):
            meta["caption"] = parts["txt"].decode("utf-8", "replace")
        img = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        if img is None:
            raise ValueError(f"{path}: sample {key!r} has no image member")
        return _record(meta, img, label_field)

    from shards.tar_reader import iter_members

    with storage.open_tar(path) as tf:
        for member, data, refusal in iter_members(tf):
            if refusal is not None:
                # Shards made by `longcap shards` never hold such a member: this tar is foreign.
                raise ValueError(
                    f"{path}: {member.name}: {refusal}; refused unread (rebuild the shard with "
                    "`longcap shards`, which records such members as failure rows)"
                )
            base = member.name.rsplit("/", 1)[-1]
            k, _, ext = base.partition(".")
            k = member.name[: len(member.name) - len(base)] + k
            if k != key and parts:
                yield emit()
                parts = {}
            key = k
            parts[ext.lower()] = data
        if parts:
            yield emit()


def read_parquet(path: Path, label_field: str | None = None) -> Iterator[dict[str, Any]]:
    """Records of a shard's Parquet file (ok rows only); needs its `image` column."""
    import pyarrow.parquet as pq

    # From an object store, coalesce each row group's column chunks into few ranged reads.
    pf = pq.ParquetFile(storage.random_access(path), pre_buffer=storage.is_uri(path))
    names = pf.schema_arrow.names
    if "image" not in names:
        raise ValueError(f"{path}: no image column (built with --no-parquet-images); read the tar")
    cols = ["key", "status", "caption", "long_captions", "image"]
    if "short_captions" in names:
        cols.append("short_captions")
    if label_field and label_field in names and label_field not in cols:
        cols.append(label_field)
    for batch in pf.iter_batches(batch_size=256, columns=cols):
        for row in batch.to_pylist():
            if row["status"] == "ok":
                yield _record(row, row["image"], label_field)


def read_shard(shard: Shard, fmt: str = "auto", label_field: str | None = None):
    """Records of one shard from its tar ("tar"), Parquet ("parquet") or whichever fits ("auto":
    the tar when present, since it needs no nested-column conversion)."""
    if fmt not in ("auto", "tar", "parquet"):
        raise ValueError(f"shard format must be auto, tar or parquet, got {fmt!r}")
    if fmt == "tar" or (fmt == "auto" and shard.tar is not None):
        if shard.tar is None:
            raise FileNotFoundError(f"shard {shard.name}: no .tar file")
        return read_tar(shard.tar, label_field)
    if shard.parquet is None:
        raise FileNotFoundError(f"shard {shard.name}: no .parquet file")
    return read_parquet(shard.parquet, label_field)


def image_to_tensor(data: bytes, size: int, mean, std) -> torch.Tensor:
    """Decode, resize the short side to `size` (bicubic), center-crop, normalise: [3, S, S].
    Raises `shards.limits.ImageLimitError` from the header, before decoding, over the caps."""
    from PIL import Image

    from shards.limits import open_image

    with open_image(data) as im:
        img = im.convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


@dataclass
class StreamConfig:
    """What a training batch holds and how the stream is ordered."""

    batch_size: int = 32
    text_mode: str = FILL  # fill | dreamlip | k (train_hooks/sampling.py)
    subcaptions: int = 4  # k (k mode)
    window: int = 1  # m consecutive sub-captions per window
    mode: str = ACROSS_MODELS  # across_models | one_model
    models: tuple[str, ...] | None = None
    long_texts: int = 1  # T
    mllm_short_texts: int = 0  # n extra short texts from the MLLMs' short captions
    dreamlip_off_by_one: bool = False
    image_size: int = 224
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    shuffle_buffer: int = 1000
    seed: int = 0
    fmt: str = "auto"


class ShardStream(IterableDataset):
    """An endless stream of training batches for one DDP rank (see the module docstring)."""

    def __init__(
        self,
        shards: list[Shard],
        tokenizer: CornerTokenizer,
        cfg: StreamConfig,
        rank: int = 0,
        world: int = 1,
        start_batch: int = 0,
    ) -> None:
        self.shards = [s for s in shards if s.count > 0]
        if not self.shards:
            raise ValueError("the shards hold no ok samples to train on")
        self.tok, self.cfg = tokenizer, cfg
        # T = 0: short captions only (the short-caption baseline); no long text is built.
        self.spec = (
            None
            if cfg.long_texts == 0
            else TextSpec(
                mode=cfg.text_mode,
                k=cfg.subcaptions,
                m=cfg.window,
                source=cfg.mode,
                texts=cfg.long_texts,
                budget=tokenizer.budget,
                models=cfg.models,
                dreamlip_off_by_one=cfg.dreamlip_off_by_one,
            )
        )
        self.rank, self.world, self.start_batch = rank, world, start_batch

    def _records(self, slot: int, slots: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(epoch, record) for one slot, endless."""
        by_shard = len(self.shards) >= slots
        i = 0
        for epoch in itertools.count():
            order = list(self.shards)
            random.Random(self.cfg.seed * 1009 + epoch).shuffle(order)
            mine = order[slot::slots] if by_shard else order
            for shard in mine:
                for rec in read_shard(shard, self.cfg.fmt):
                    if by_shard or i % slots == slot:
                        yield epoch, rec
                    i += 1

    def _shuffled(self, stream, slot: int, slots: int):
        # A buffer larger than the slot's share of an epoch would mix epochs and put one image
        # twice in a batch of a small dataset: cap it at that share.
        share = sum(s.count for s in self.shards) // slots
        size = max(1, min(self.cfg.shuffle_buffer, share))
        rng = random.Random(self.cfg.seed * 7919 + slot)
        buf = []
        for item in stream:
            if len(buf) < size:
                buf.append(item)
                continue
            j = rng.randrange(size)
            buf[j], item = item, buf[j]
            yield item

    def prepare(
        self, epoch: int, rec: dict[str, Any]
    ) -> tuple[torch.Tensor, list[str], list[list[str]]]:
        """(pixels, 1 + n short texts, T long texts as lists of pieces) of one record."""
        c = self.cfg
        rng = random.Random(sample_seed(c.seed, epoch, rec["key"]))
        longs: list[list[str]] = []
        if self.spec is not None:
            longs = training_texts(rec["long_captions"], self.spec, rng, self.tok.count)
            # No long caption: the sample still trains, each long text being its short caption.
            longs = longs or [[rec["caption"]]] * self.spec.texts
        shorts = short_texts(
            rec["caption"], rec.get("short_captions"), c.mllm_short_texts, rng, c.models
        )
        try:
            pixels = image_to_tensor(rec["image"], c.image_size, c.image_mean, c.image_std)
        except ImageLimitError as exc:
            raise ImageLimitError(f"sample {rec['key']!r}: {exc}") from None
        return pixels, shorts, longs

    def _stack(self, texts_per_sample: list[list[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, B, L] ids and mask from N texts per sample (text-major, as the model reads)."""
        n, b = len(texts_per_sample[0]), len(texts_per_sample)
        if n == 0:  # T = 0 long texts
            empty = torch.zeros(0, b, 1, dtype=torch.long)
            return empty, empty.bool()
        ids, mask = self.tok([texts_per_sample[i][t] for t in range(n) for i in range(b)])
        return ids.view(n, b, -1), mask.view(n, b, -1)

    def collate(self, items: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        prepared = [self.prepare(e, r) for e, r in items]
        short_ids, short_mask = self._stack([[[s] for s in p[1]] for p in prepared])
        long_ids, long_mask = self._stack([p[2] for p in prepared])
        return {
            "pixels": torch.stack([p[0] for p in prepared]),
            "short_ids": short_ids,
            "short_mask": short_mask,
            "long_ids": long_ids,
            "long_mask": long_mask,
            "keys": [r["key"] for _, r in items],
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        phys, workers = (0, 1) if info is None else (info.id, info.num_workers)
        logical = (phys + self.start_batch) % workers
        skip = len(range(logical, self.start_batch, workers))
        slots = self.world * workers
        slot = self.rank * workers + logical
        stream = self._shuffled(self._records(slot, slots), slot, slots)
        bs = self.cfg.batch_size
        for n in itertools.count():
            items = list(itertools.islice(stream, bs))
            if n >= skip:
                yield self.collate(items)


def make_loader(
    shards_dir: str | Path,
    tokenizer: CornerTokenizer,
    cfg: StreamConfig,
    num_workers: int = 2,
    rank: int = 0,
    world: int = 1,
    start_batch: int = 0,
):
    """A DataLoader of training batches for this rank, starting after `start_batch` batches."""
    from torch.utils.data import DataLoader

    ds = ShardStream(list_shards(shards_dir), tokenizer, cfg, rank, world, start_batch)
    return DataLoader(
        ds,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
    )
