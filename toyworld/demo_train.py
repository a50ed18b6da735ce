"""The demo's training step: retrieval before, a short tiny-model run, retrieval after.

Called by `make demo` after the shards are built. Sizes are chosen to finish in about a minute on
two CPU cores; the numbers only show that the loop learns, not a model's quality. Texts are the
trainer's defaults: fill texts over every listed captioner, at context 192.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_demo_training(
    shards_dir: str | Path,
    out_dir: str | Path,
    steps: int = 600,
    models: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a random tiny model, train it `steps` steps, evaluate again; print and return
    {"before": results, "after": results, "train": summary}. `models` limits the long captions
    used (the demo leaves out the tiny random captioners' gibberish)."""
    import torch

    from train_hooks.evaluate import evaluate_retrieval, format_results, load_checkpoint
    from train_hooks.model import build_model, preset
    from train_hooks.train import TrainConfig, make_tokenizer, train

    cfg = TrainConfig(
        shards=str(shards_dir),
        out=str(out_dir),
        preset="tiny",
        corner_tokens=2,
        steps=steps,
        batch_size=32,
        lr=1e-3,
        warmup=30,
        num_workers=1,
        models=models,
    )
    torch.manual_seed(cfg.seed)
    before_model = build_model(preset("tiny", num_corner=cfg.corner_tokens)).eval()
    tok = make_tokenizer(cfg)
    before = evaluate_retrieval(before_model, tok, shards_dir, models=models)
    print("retrieval before training (random tiny model):")
    print(format_results(before))
    only = f" --models {','.join(models)}" if models else ""
    print(
        f"training {steps} steps: longcap train --shards {shards_dir} --out {out_dir} "
        f"--steps {steps} --lr {cfg.lr:g} --warmup {cfg.warmup} --workers {cfg.num_workers}{only}"
    )
    summary = train(cfg)
    model, tok, _ = load_checkpoint(out_dir)
    after = evaluate_retrieval(model, tok, shards_dir, models=models)
    print("retrieval after training (on the training shards: a smoke test, not a benchmark):")
    print(format_results(after))
    for task in ("long/i2t", "short/i2t"):
        print(f"{task} R@1: {before[f'{task}_R@1']:.1f} -> {after[f'{task}_R@1']:.1f}")
    return {"before": before, "after": after, "train": summary}
