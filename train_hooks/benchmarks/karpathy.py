"""Short-text retrieval on the Karpathy test splits of COCO (5,000 images) and Flickr30k (1,000).

Layout: Karpathy's `dataset_coco.json` / `dataset_flickr30k.json` (from caption_datasets.zip) in
the root, images where the official downloads put them: COCO `<filepath>/<filename>` (val2014/,
train2014/), Flickr30k `flickr30k-images/<filename>`. Each test image keeps its first five `raw`
captions (Long-CLIP eval/retrieval/coco.py:24 `captions[0:5]`), each a short text split at '. '
as LoTLIP's tokenizer does. Image-to-text counts a hit when any of the five is in the top k
(coco.py:38-46); text-to-image when the caption's image is (coco.py:72-80).
"""

from __future__ import annotations

from pathlib import Path

from train_hooks.benchmarks.base import (
    LayoutError,
    RetrievalSet,
    cap,
    check_images,
    field_of,
    read_json,
)
from train_hooks.benchmarks.text import short_text_pieces

CAPTIONS_PER_IMAGE = 5


def load_karpathy(
    name: str,
    root: str | Path,
    max_samples: int | None = None,
    annotations: str | Path | None = None,
    split: str = "test",
) -> RetrievalSet:
    """`name` is 'coco' or 'flickr30k'; `max_samples` keeps the first N images (all their
    captions)."""
    root = Path(root)
    anno = Path(annotations) if annotations else root / f"dataset_{name}.json"
    data = read_json(anno, f"Karpathy's dataset_{name}.json (caption_datasets.zip)")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise LayoutError(f"{anno}: expected an object with an 'images' list (Karpathy format)")
    rows = [r for r in data["images"] if r.get("split") == split]
    if not rows:
        raise LayoutError(f"{anno}: no image with split {split!r}")
    images, texts, owner = [], [], []
    for i, row in enumerate(cap(rows, max_samples)):
        where = f"{anno} image {field_of(row, 'filename', str(anno))}"
        if name == "coco":
            images.append(root / field_of(row, "filepath", where) / row["filename"])
        else:
            images.append(root / "flickr30k-images" / row["filename"])
        sents = field_of(row, "sentences", where)[:CAPTIONS_PER_IMAGE]
        if not sents:
            raise LayoutError(f"{where}: no sentences")
        for s in sents:
            texts.append(short_text_pieces(field_of(s, "raw", where)))
            owner.append(i)
    check_images(images, name)
    return RetrievalSet(name, images, texts, owner, {"annotations": str(anno), "split": split})
