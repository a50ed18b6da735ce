"""Scoring a checkpoint on the public benchmarks, and LoTLIP's Table-2 view of the results.

Retrieval: every image and every text embedded once ([CLS] embedding, normalised), R@1/5/10 both
ways with `evaluate.recall_at` (an image with several captions hits when any of them is in its
top k). LoTLIP reports R@1 (training/zero_shot.py:43-73, argmax both ways). Classification:
top-1/top-5 against the class embeddings of `evaluate.class_embeddings`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from train_hooks.benchmarks import BENCHMARKS, LONG8, benchmark, load_benchmark
from train_hooks.benchmarks.base import ClassificationSet, RetrievalSet
from train_hooks.evaluate import (
    class_embeddings,
    embed_images,
    embed_texts,
    recall_at,
    top_k_accuracy,
)
from train_hooks.model import LoTLIP
from train_hooks.tokenizer import CornerTokenizer

KS = (1, 5, 10)


def embed_image_files(
    model: LoTLIP,
    paths: Sequence[Path],
    batch_size: int = 64,
    workers: int = 0,
    cache: dict[Path, torch.Tensor] | None = None,
) -> torch.Tensor:
    """[N, D] embeddings of image files, each file embedded once per `cache` (ShareGPT4V-10k
    starts with ShareGPT4V-1k's images)."""
    cache = {} if cache is None else cache
    todo = [p for p in dict.fromkeys(paths) if p not in cache]
    if todo:
        cache.update(zip(todo, embed_images(model, todo, batch_size, workers), strict=True))
    return torch.stack([cache[p] for p in paths])


def score_retrieval(
    model: LoTLIP,
    tok: CornerTokenizer,
    rs: RetrievalSet,
    batch_size: int = 64,
    workers: int = 0,
    cache: dict[Path, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """{"images", "texts", "texts_filling_context", "i2t_R@1", ..., "t2i_R@10"} (percent)."""
    model.eval()
    img = embed_image_files(model, rs.images, batch_size, workers, cache)
    txt = embed_texts(model, tok, rs.texts, batch_size).cpu()
    res: dict[str, Any] = {"images": len(rs.images), "texts": len(rs.texts)}
    # Texts that fill the whole context (cut, or fitting exactly): long captions may not fit.
    res["texts_filling_context"] = sum(
        len(ids) == tok.context_length for ids in tok.encode_ids(rs.texts)
    )
    res.update(recall_at(img @ txt.t(), torch.tensor(rs.text_image), KS))
    return res


def score_classification(
    model: LoTLIP,
    tok: CornerTokenizer,
    cs: ClassificationSet,
    batch_size: int = 64,
    workers: int = 0,
) -> dict[str, Any]:
    """{"images", "classes", "templates", "top1", "top5"} (percent)."""
    model.eval()
    cls = class_embeddings(model, tok, cs.classnames, cs.templates)
    img = embed_image_files(model, cs.images, batch_size, workers)
    res: dict[str, Any] = {
        "images": len(cs.images),
        "classes": len(cs.classnames),
        "templates": len(cs.templates),
    }
    res.update(top_k_accuracy(img @ cls.t(), torch.tensor(cs.labels)))
    return res


def expand(name: str) -> list[str]:
    """`long8` -> its four benchmarks; any other name -> itself."""
    return list(LONG8) if name == "long8" else [benchmark(name).name]


def benchmark_root(
    name: str, root: str | Path | None, several: bool, overrides: Mapping[str, str] | None = None
) -> Path:
    """Where benchmark `name` lives: an override (`--bench-root NAME=DIR`, NAME a benchmark or
    its folder name such as `sharegpt4v`), else `root` itself for one benchmark, else
    `root/<folder>` when several run together."""
    b = benchmark(name)
    for key in (b.name, b.folder):
        if overrides and key in overrides:
            return Path(overrides[key])
    if root is None:
        raise ValueError(f"{name}: no folder given; pass --root DIR or --bench-root {name}=DIR")
    return Path(root) / b.folder if several else Path(root)


def run_benchmarks(
    model: LoTLIP,
    tok: CornerTokenizer,
    name: str,
    root: str | Path | None,
    overrides: Mapping[str, str] | None = None,
    max_samples: int | None = None,
    annotations: str | Path | None = None,
    batch_size: int = 64,
    workers: int = 0,
    log=print,
) -> dict[str, dict[str, Any]]:
    """{benchmark: figures} for `name` (one benchmark or `long8`)."""
    names = expand(name)
    out, cache = {}, {}
    for n in names:
        where = benchmark_root(n, root, len(names) > 1, overrides)
        data = load_benchmark(n, where, max_samples, annotations)
        log(f"{n}: {len(data.images)} images from {where}")
        if isinstance(data, RetrievalSet):
            out[n] = score_retrieval(model, tok, data, batch_size, workers, cache)
        else:
            out[n] = score_classification(model, tok, data, batch_size, workers)
        out[n]["root"] = str(where)
    return out


def long8_figures(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """LoTLIP Table 2's columns ("DCI I2T", ..., "SV-10k T2I") as R@1, and "Avg"."""
    cols: dict[str, float] = {}
    for n in LONG8:
        label = BENCHMARKS[n].label
        cols[f"{label} I2T"] = results[n]["i2t_R@1"]
        cols[f"{label} T2I"] = results[n]["t2i_R@1"]
    cols["Avg"] = sum(cols.values()) / len(cols)
    return cols


def long8_table(results: Mapping[str, Mapping[str, Any]], model: str = "this checkpoint") -> str:
    """A Markdown table shaped like LoTLIP's Table 2: one row, R@1 in percent."""
    cols = long8_figures(results)
    head = "| Model | " + " | ".join(cols) + " |"
    rule = "|---|" + "---:|" * len(cols)
    row = f"| {model} | " + " | ".join(f"{v:.2f}" for v in cols.values()) + " |"
    return "\n".join([head, rule, row])


def format_results(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per benchmark: retrieval R@1/5/10 both ways, or classification top-1/top-5."""
    lines = []
    ret = {n: r for n, r in results.items() if "i2t_R@1" in r}
    if ret:
        lines += [
            "| benchmark | images | texts | I2T R@1 | R@5 | R@10 | T2I R@1 | R@5 | R@10 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, r in ret.items():
            figs = [r[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in KS]
            lines.append(
                f"| {n} | {r['images']} | {r['texts']} | "
                + " | ".join(f"{v:.2f}" for v in figs)
                + " |"
            )
    cls = {n: r for n, r in results.items() if "top1" in r}
    for n, r in cls.items():
        lines.append(
            f"{n}: top-1 {r['top1']:.2f}, top-5 {r['top5']:.2f} ({r['images']} images, "
            f"{r['classes']} classes x {r['templates']} templates)"
        )
    return "\n".join(lines)


def names() -> Sequence[str]:
    """Every name `--benchmark` accepts."""
    return [*BENCHMARKS, "long8"]
