"""Long-text retrieval sets, read in their released layouts: DCI, IIW, ShareGPT4V, Urban1k, DOCCI.

Each image has one long caption; its text is `long_text_pieces(caption)` (LoTLIP's split, every
sub-caption followed by [SEP]). Images and captions come in the order LoTLIP's loaders read them
(cited per function; docs/EVAL.md has the trees). `max_samples` keeps the first N pairs.
"""

from __future__ import annotations

from pathlib import Path

from train_hooks.benchmarks.base import (
    LayoutError,
    RetrievalSet,
    cap,
    check_images,
    field_of,
    need_dir,
    read_json,
    read_jsonl,
)
from train_hooks.benchmarks.text import long_text_pieces


def _one_to_one(name: str, images: list[Path], captions: list[str], **meta) -> RetrievalSet:
    check_images(images, name)
    texts = [long_text_pieces(c) for c in captions]
    return RetrievalSet(name, images, texts, list(range(len(images))), dict(meta))


def load_dci(root: str | Path, max_samples: int | None = None) -> RetrievalSet:
    """DCI as LoTLIP reads it (dataloaders/dci_retrieval.py:13-31): every split listed in
    `densely_captioned_images/splits.json`, in its key order (7,805 images in the release); text =
    `short_caption + '\\n' + extra_caption` of `annotations/<file>`; image =
    `photos/<annotation's image>`."""
    root = Path(root)
    if (root / "splits.json").is_file() and not (root / "densely_captioned_images").is_dir():
        raise LayoutError(f"{root}: this is densely_captioned_images/ itself; give its parent")
    base = need_dir(root / "densely_captioned_images", "DCI's dci.tar.gz unpacked here")
    splits = read_json(base / "splits.json", 'DCI splits.json: {"train": [...], ...}')
    if not isinstance(splits, dict):
        raise LayoutError(f"{base / 'splits.json'}: expected an object of split -> file names")
    files = cap([f for v in splits.values() for f in v], max_samples)
    anno_dir = need_dir(base / "annotations", "DCI annotations/*.json")
    photos = need_dir(base / "photos", "DCI photos/ (the images of sa_000138.tar)")
    images, captions = [], []
    for f in files:
        path = anno_dir / f
        anno = read_json(path, "a DCI annotation named in splits.json")
        images.append(photos / field_of(anno, "image", str(path)))
        short = field_of(anno, "short_caption", str(path))
        captions.append(f"{short}\n{field_of(anno, 'extra_caption', str(path))}")
    return _one_to_one("dci", images, captions)


# LoTLIP's IIW: three subsets in this order, each with its image folder
# (dataloaders/iiw_retrieval.py:17-22, data_preprocess.py:42-46).
IIW_SUBSETS = (("DOCCI_Test", "docci"), ("IIW-400", "docci_aar"), ("DCI_Test", "dci"))


def load_iiw(root: str | Path, max_samples: int | None = None) -> RetrievalSet:
    """IIW as LoTLIP reads it (dataloaders/iiw_retrieval.py:34-51): DOCCI_Test, IIW-400 and
    DCI_Test pooled (612 images); text = the `IIW` field; image = `<subset folder>/<image or
    image/key>` with '.jpg' added when the name lacks it. The jsonl files are those of
    google/imageinwords `datasets/<subset>/data.jsonl`, under `root/<subset>/`; the images are
    where LoTLIP's data_preprocess.py copies them. A DOCCI image still named as in DOCCI's
    download is found too: data_preprocess.py:23-24 falls back from 'test' to 'train' in the name.
    """
    root = Path(root)
    images, captions = [], []
    for subset, folder in IIW_SUBSETS:
        path = root / subset / "data.jsonl"
        for n, row in enumerate(read_jsonl(path, f"imageinwords datasets/{subset}/data.jsonl"), 1):
            where = f"{path}:{n}"
            name = row["image"] if "image" in row else field_of(row, "image/key", where)
            if ".jpg" not in name:
                name += ".jpg"
            img = root / folder / name
            if not img.is_file() and (root / folder / name.replace("test", "train")).is_file():
                img = root / folder / name.replace("test", "train")
            images.append(img)
            captions.append(field_of(row, "IIW", where))
    return _one_to_one("iiw", cap(images, max_samples), cap(captions, max_samples))


SHAREGPT4V_JSON = "share4v_sam_10k.json"


def load_sharegpt4v(
    root: str | Path,
    num: int,
    max_samples: int | None = None,
    annotations: str | Path | None = None,
) -> RetrievalSet:
    """ShareGPT4V-1k / -10k as LoTLIP reads them (dataloaders/share4v.py:14-52): the first `num`
    entries of LoTLIP's `share4v_sam_10k.json` (its repo, dataloaders/share4v/; the first 10k of
    ShareGPT4V's share-captioner_coco_lcs_sam_1246k_1107.json SAM part); text =
    `conversations[1]['value']`; image = `root/<entry's image>` (root: the SA-1B folder).
    The JSON is read from `annotations` or else `root/share4v_sam_10k.json`."""
    root = Path(root)
    anno = Path(annotations) if annotations else root / SHAREGPT4V_JSON
    rows = read_json(anno, f"LoTLIP's {SHAREGPT4V_JSON} (a list of ShareGPT4V entries)")
    if not isinstance(rows, list) or len(rows) < num:
        got = len(rows) if isinstance(rows, list) else type(rows).__name__
        raise LayoutError(f"{anno}: expected a list of at least {num} entries, got {got}")
    rows = cap(rows[:num], max_samples)
    images, captions = [], []
    for i, row in enumerate(rows):
        where = f"{anno}[{i}]"
        images.append(root / field_of(row, "image", where))
        conv = field_of(row, "conversations", where)
        if not isinstance(conv, list) or len(conv) < 2 or "value" not in conv[1]:
            raise LayoutError(f"{where}: conversations[1]['value'] (the caption) is missing")
        captions.append(conv[1]["value"])
    return _one_to_one(f"sharegpt4v-{num // 1000}k", images, captions, annotations=str(anno))


def load_urban1k(root: str | Path, max_samples: int | None = None) -> RetrievalSet:
    """Urban1k as LoTLIP (dataloaders/urban1k.py:14-48) and Long-CLIP (eval/retrieval/Urban1k.py)
    read it: `caption/<name>.txt`, its first line; image `image/<name>.jpg`. They list the caption
    folder in os.listdir order; here it is sorted (retrieval scores do not depend on the order)."""
    root = Path(root)
    cap_dir = need_dir(root / "caption", "Urban1k caption/*.txt")
    img_dir = need_dir(root / "image", "Urban1k image/*.jpg")
    files = cap(sorted(p for p in cap_dir.iterdir() if p.suffix == ".txt"), max_samples)
    if not files:
        raise LayoutError(f"{cap_dir}: no .txt captions; expected Urban1k's caption/*.txt")
    captions = []
    for f in files:
        lines = f.read_text(encoding="utf8").splitlines()
        captions.append(lines[0] if lines else "")
    images = [img_dir / (f.name[:-4] + ".jpg") for f in files]
    return _one_to_one("urban1k", images, captions)


DOCCI_JSON = "docci_descriptions.jsonlines"


def load_docci(root: str | Path, max_samples: int | None = None) -> RetrievalSet:
    """DOCCI's test split (5,000 images) from its release: `docci_descriptions.jsonlines` rows with
    `split == "test"`, in file order; text = `description`; image = `images/<image_file>`.
    LoTLIP and Long-CLIP ship no DOCCI loader, so the text follows LoTLIP's rule for every other
    long benchmark (its split, [SEP] after each sub-caption)."""
    root = Path(root)
    path = root / DOCCI_JSON
    rows = read_jsonl(path, "DOCCI's docci_descriptions.jsonlines")
    images, captions = [], []
    for n, row in enumerate(rows, 1):
        if field_of(row, "split", f"{path}:{n}") != "test":
            continue
        images.append(root / "images" / field_of(row, "image_file", f"{path}:{n}"))
        captions.append(field_of(row, "description", f"{path}:{n}"))
    if not images:
        raise LayoutError(f"{path}: no row with split 'test'")
    return _one_to_one("docci", cap(images, max_samples), cap(captions, max_samples))
