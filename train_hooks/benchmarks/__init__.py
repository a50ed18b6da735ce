"""Public benchmarks read in their released layouts: one registry of names to loaders.

`load_benchmark(name, root)` returns a RetrievalSet or a ClassificationSet (file paths and texts
only; nothing decoded). `train_hooks.benchmarks.run` embeds them with a checkpoint and scores
them. docs/EVAL.md lists each benchmark's layout, text rule and the reference code it follows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from train_hooks.benchmarks.base import ClassificationSet, LayoutError, RetrievalSet
from train_hooks.benchmarks.imagenet import load_imagenet
from train_hooks.benchmarks.karpathy import load_karpathy
from train_hooks.benchmarks.long_text import (
    load_dci,
    load_docci,
    load_iiw,
    load_sharegpt4v,
    load_urban1k,
)


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its loader (root, max_samples, annotations) and its folder under a common
    root (for `long8` and `--root` pointing at a folder of benchmarks)."""

    name: str
    kind: str  # "retrieval" or "classification"
    folder: str
    load: Callable[..., RetrievalSet | ClassificationSet]
    label: str  # column name in tables


def _plain(fn):
    return lambda root, max_samples=None, annotations=None: fn(root, max_samples)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("dci", "retrieval", "dci", _plain(load_dci), "DCI"),
        Benchmark("iiw", "retrieval", "iiw", _plain(load_iiw), "IIW"),
        Benchmark(
            "sharegpt4v-1k",
            "retrieval",
            "sharegpt4v",
            lambda root, max_samples=None, annotations=None: load_sharegpt4v(
                root, 1000, max_samples, annotations
            ),
            "SV-1k",
        ),
        Benchmark(
            "sharegpt4v-10k",
            "retrieval",
            "sharegpt4v",
            lambda root, max_samples=None, annotations=None: load_sharegpt4v(
                root, 10000, max_samples, annotations
            ),
            "SV-10k",
        ),
        Benchmark("urban1k", "retrieval", "urban1k", _plain(load_urban1k), "Urban1k"),
        Benchmark("docci", "retrieval", "docci", _plain(load_docci), "DOCCI"),
        Benchmark(
            "coco",
            "retrieval",
            "coco",
            lambda root, max_samples=None, annotations=None: load_karpathy(
                "coco", root, max_samples, annotations
            ),
            "COCO",
        ),
        Benchmark(
            "flickr30k",
            "retrieval",
            "flickr30k",
            lambda root, max_samples=None, annotations=None: load_karpathy(
                "flickr30k", root, max_samples, annotations
            ),
            "Flickr30k",
        ),
        Benchmark("imagenet", "classification", "imagenet", _plain(load_imagenet), "ImageNet"),
    )
}

# LoTLIP's Table 2 (long-text-image retrieval): these four, I2T and T2I R@1 each, then the
# average. Its code runs them as `--share4v_val_num 1000,10000 --dci-retrieval --iiw-retrieval`
# (README.md:56-81 @ 301b906).
LONG8 = ("dci", "iiw", "sharegpt4v-1k", "sharegpt4v-10k")


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def load_benchmark(
    name: str,
    root: str | Path,
    max_samples: int | None = None,
    annotations: str | Path | None = None,
) -> RetrievalSet | ClassificationSet:
    """The benchmark `name` read from `root` (its own folder, in the release layout)."""
    return benchmark(name).load(root, max_samples=max_samples, annotations=annotations)


__all__ = [
    "BENCHMARKS",
    "LONG8",
    "Benchmark",
    "ClassificationSet",
    "LayoutError",
    "RetrievalSet",
    "benchmark",
    "load_benchmark",
]
