"""ImageNet-1k zero-shot: the official validation images in class folders, OpenAI's names and
80 prompt templates.

Layout: `root/val/nXXXXXXXX/*.JPEG` (or `root` itself holding the `nXXXXXXXX/` folders), the
common layout of the ILSVRC2012 validation set (torchvision ImageFolder, as LoTLIP's
training/data.py:135 and Long-CLIP's eval/classification/imagenet read it). Class i is the i-th
WordNet id in sorted order (data/imagenet_wnids.txt, from Long-CLIP's categories.txt), named by
OpenAI's CLIP class names (data/imagenet_classnames.txt) and embedded as the mean of the 80
templates (data/openai_imagenet_templates.txt); both lists are LoTLIP's
open_clip/zero_shot_metadata.py (IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from train_hooks.benchmarks.base import ClassificationSet, LayoutError, need_dir

DATA = Path(__file__).parent / "data"
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


def _lines(name: str) -> list[str]:
    return [ln for ln in (DATA / name).read_text(encoding="utf8").splitlines() if ln]


@cache
def openai_templates() -> tuple[str, ...]:
    """The 80 prompt templates of OpenAI's CLIP ImageNet evaluation, each with one '{}'."""
    return tuple(_lines("openai_imagenet_templates.txt"))


@cache
def imagenet_classnames() -> tuple[str, ...]:
    """OpenAI's 1,000 ImageNet class names, in class-index (sorted WordNet id) order."""
    return tuple(_lines("imagenet_classnames.txt"))


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids, sorted (class index order)."""
    return tuple(_lines("imagenet_wnids.txt"))


def load_imagenet(root: str | Path, max_samples: int | None = None) -> ClassificationSet:
    """Every image under the class folders, by class then file name; `max_samples` keeps an
    evenly spread subset (every n-th image) so a quick run still sees many classes."""
    root = Path(root)
    val = root / "val" if (root / "val").is_dir() else root
    need_dir(val, "ImageNet val/ with one nXXXXXXXX/ folder per class")
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    folders = sorted(p for p in val.iterdir() if p.is_dir())
    unknown = [p.name for p in folders if p.name not in index]
    if unknown or not folders:
        raise LayoutError(
            f"{val}: expected only ImageNet-1k class folders nXXXXXXXX/ "
            f"(found {unknown[:3] or 'none'}); a flat val/ needs sorting into class folders "
            "first (see docs/EVAL.md)"
        )
    images, labels = [], []
    for folder in folders:
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                images.append(f)
                labels.append(index[folder.name])
    if not images:
        raise LayoutError(f"{val}: the class folders hold no .JPEG images")
    if max_samples and max_samples < len(images):
        step = len(images) / max_samples
        keep = [int(i * step) for i in range(max_samples)]
        images, labels = [images[i] for i in keep], [labels[i] for i in keep]
    return ClassificationSet(
        "imagenet",
        images,
        labels,
        list(imagenet_classnames()),
        list(openai_templates()),
        {"root": str(val), "class_folders": len(folders)},
    )
