"""Evaluation: long- and short-text retrieval R@1/R@5 both ways, and zero-shot classification.

Retrieval reads held-out shards once, in order. Each image has one short text (its raw caption)
and one long text per usable long caption (every model's caption, or those of `models`), built as
LoTLIP evaluates: the whole caption's sub-captions joined with [SEP], cut to the context length.
A text is its [CLS] embedding. Image-to-text counts a hit when any of the image's texts is in the
top k; text-to-image when the text's image is.

Zero-shot: a "labelled shard set" is any longcap shard folder whose samples carry a class name in
a field of their metadata (the tar's KEY.json or a Parquet column); the default field is `source`,
which every longcap shard has. Class names are the sorted distinct labels unless given; each class
is embedded as the mean of OpenAI's 80 ImageNet prompt templates ("a bad photo of a {}." ...;
train_hooks/benchmarks/data/openai_imagenet_templates.txt), as CLIP and LoTLIP do.

The public benchmarks (DCI, IIW, ShareGPT4V, Urban1k, DOCCI, COCO, Flickr30k, ImageNet) live in
train_hooks.benchmarks and use the embedding, recall and classifier functions here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from shards import storage
from train_hooks.benchmarks.imagenet import openai_templates
from train_hooks.benchmarks.text import short_text_pieces
from train_hooks.data import image_to_tensor, list_shards, read_shard
from train_hooks.model import LoTLIP, ModelConfig
from train_hooks.sampling import full_long_texts
from train_hooks.tokenizer import CornerTokenizer

# OpenAI's 80 ImageNet prompt templates (a data file), for every zero-shot evaluation.
TEMPLATES = openai_templates()


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[LoTLIP, CornerTokenizer, dict]:
    """(model in eval mode, its tokenizer, the checkpoint dict) from a checkpoint file or a run
    folder (its latest checkpoint)."""
    from train_hooks.checkpoints import latest_checkpoint, load_checkpoint_file

    p = storage.as_path(path)  # a local path, or a run or checkpoint in a bucket (s3://...)
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise FileNotFoundError(
                f"{p}: no checkpoints/step_*.pt; train with `longcap train` first"
            )
        p = found
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    ck = load_checkpoint_file(p, device)  # weights_only: a planted pickle is refused
    mcfg = ModelConfig.from_dict(ck["model_config"])
    # Weights come from the checkpoint: do not look for the pretrained folders again.
    mcfg.text_weights = mcfg.vision_weights = None
    model = LoTLIP(mcfg)
    model.load_state_dict(ck["model"])
    t = ck["tokenizer"]
    tok = CornerTokenizer(t["vocab"], t["num_corner"], t["context_length"])
    ck["path"] = str(p)
    return model.to(device).eval(), tok, ck


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def embed_texts(
    model: LoTLIP, tok: CornerTokenizer, texts: list[list[str]], bs: int = 64
) -> torch.Tensor:
    dev = next(model.parameters()).device
    out = [model.encode_text(*(t.to(dev) for t in tok(chunk))) for chunk in _batches(texts, bs)]
    return torch.cat(out).float() if out else torch.zeros(0, model.cfg.embed_dim)


@torch.no_grad()
def embed_images(
    model: LoTLIP, images: Sequence[bytes | Path], bs: int = 64, workers: int = 0
) -> torch.Tensor:
    """[N, D] normalised image embeddings of encoded images or image files (read batch by
    batch, so a benchmark's files are never all in memory). `workers` > 0 decodes in that many
    threads (PIL releases the GIL while decoding and resizing)."""
    c, dev = model.cfg, next(model.parameters()).device

    def pixels(item: bytes | Path) -> torch.Tensor:
        data = item if isinstance(item, bytes) else Path(item).read_bytes()
        return image_to_tensor(data, c.image_size, c.image_mean, c.image_std)

    out = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for chunk in _batches(list(images), bs):
            px = list(pool.map(pixels, chunk)) if workers > 0 else [pixels(b) for b in chunk]
            out.append(model.encode_image(torch.stack(px).to(dev)))
    return torch.cat(out).float().cpu() if out else torch.zeros(0, model.cfg.embed_dim)


def read_eval_set(
    shards_dir: str | Path,
    fmt: str = "auto",
    label_field: str | None = None,
    max_samples: int | None = None,
) -> list[dict[str, Any]]:
    """The ok records of a shard folder, in shard order (at most max_samples)."""
    recs = []
    for shard in list_shards(shards_dir):
        for rec in read_shard(shard, fmt, label_field):
            recs.append(rec)
            if max_samples and len(recs) >= max_samples:
                return recs
    return recs


def recall_at(
    sim: torch.Tensor, text_image: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """R@k in percent for sim [images, texts] where text t belongs to image text_image[t].

    An image may own several texts (COCO's five captions): image-to-text counts a hit when ANY
    of its texts is among its top k; text-to-image when the text's image is among the top k."""
    n_img = sim.shape[0]
    res = {}
    for k in ks:
        top_img = sim.topk(min(k, n_img), dim=0).indices  # [k, texts]
        res[f"t2i_R@{k}"] = 100.0 * (top_img == text_image[None]).any(0).float().mean().item()
        top_txt = sim.topk(min(k, sim.shape[1]), dim=1).indices  # [images, k]
        own = text_image[top_txt] == torch.arange(n_img)[:, None]
        res[f"i2t_R@{k}"] = 100.0 * own.any(1).float().mean().item()
    return res


def evaluate_retrieval(
    model: LoTLIP,
    tok: CornerTokenizer,
    shards_dir: str | Path,
    fmt: str = "auto",
    models: Sequence[str] | None = None,
    max_samples: int | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """{"long/i2t_R@1": ..., "short/t2i_R@5": ..., "images": N, "long_texts": M}."""
    model.eval()
    recs = read_eval_set(shards_dir, fmt, max_samples=max_samples)
    if not recs:
        raise ValueError(f"{shards_dir}: no ok samples to evaluate")
    img = embed_images(model, [r["image"] for r in recs], batch_size).cpu()
    short = embed_texts(model, tok, [[r["caption"]] for r in recs], batch_size).cpu()
    res: dict[str, float] = {"images": len(recs)}
    for name, val in recall_at(img @ short.t(), torch.arange(len(recs))).items():
        res[f"short/{name}"] = val
    longs, owner = [], []
    for i, r in enumerate(recs):
        for _, subs in full_long_texts(r["long_captions"], models):
            longs.append(subs)
            owner.append(i)
    res["long_texts"] = len(longs)
    if longs:
        emb = embed_texts(model, tok, longs, batch_size).cpu()
        for name, val in recall_at(img @ emb.t(), torch.tensor(owner)).items():
            res[f"long/{name}"] = val
    return res


def zero_shot(
    model: LoTLIP,
    tok: CornerTokenizer,
    shards_dir: str | Path,
    label_field: str = "source",
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] = TEMPLATES,
    fmt: str = "auto",
    max_samples: int | None = None,
) -> dict[str, float]:
    """{"zeroshot/top1", "zeroshot/top5", "classes", "images"}; samples whose label is not a class
    are left out (and counted in "unlabelled")."""
    model.eval()
    recs = read_eval_set(shards_dir, fmt, label_field, max_samples)
    labelled = [r for r in recs if r["label"] is not None]
    names = list(classnames) if classnames else sorted({str(r["label"]) for r in labelled})
    index = {n: i for i, n in enumerate(names)}
    keep = [r for r in labelled if str(r["label"]) in index]
    if not keep:
        raise ValueError(
            f"{shards_dir}: no sample has a label in field {label_field!r} among the classes"
        )
    cls = class_embeddings(model, tok, names, templates)
    img = embed_images(model, [r["image"] for r in keep])
    truth = torch.tensor([index[str(r["label"])] for r in keep])
    acc = top_k_accuracy(img @ cls.t(), truth)
    return {
        "zeroshot/top1": acc["top1"],
        "zeroshot/top5": acc["top5"],
        "classes": len(names),
        "images": len(keep),
        "unlabelled": len(recs) - len(keep),
    }


@torch.no_grad()
def class_embeddings(
    model: LoTLIP,
    tok: CornerTokenizer,
    classnames: Sequence[str],
    templates: Sequence[str] = TEMPLATES,
    bs: int = 1024,
) -> torch.Tensor:
    """[C, D]: each class the normalised mean of its normalised prompt embeddings (open_clip's
    build_zero_shot_classifier); a prompt is tokenized as LoTLIP's tokenizer does ('. ' -> [SEP],
    so "a photo of a St. Bernard." has one)."""
    prompts = [short_text_pieces(t.format(n)) for n in classnames for t in templates]
    emb = embed_texts(model, tok, prompts, bs).cpu()
    return F.normalize(emb.view(len(classnames), len(templates), -1).mean(1), dim=-1)


def top_k_accuracy(logits: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent for logits [images, classes]."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return {
        "top1": 100.0 * (top[:, 0] == truth).float().mean().item(),
        "top5": 100.0 * (top == truth[:, None]).any(1).float().mean().item(),
    }


def format_results(res: dict[str, float]) -> str:
    """A small table: one row per task, R@1 and R@5."""
    lines = ["| task | R@1 | R@5 |", "|---|---:|---:|"]
    for task in ("long/i2t", "long/t2i", "short/i2t", "short/t2i"):
        if f"{task}_R@1" in res:
            lines.append(f"| {task} | {res[f'{task}_R@1']:.1f} | {res[f'{task}_R@5']:.1f} |")
    if "zeroshot/top1" in res:
        lines.append(
            f"| zero-shot ({res['classes']} classes) | {res['zeroshot/top1']:.1f} "
            f"| {res['zeroshot/top5']:.1f} |"
        )
    return "\n".join(lines)
