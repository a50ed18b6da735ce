"""GPU check of the `transformers` engine at a real size: images/s of recaption.engine_hf on
random-weight models of LLaVA-1.5-7B's and InstructBLIP-Vicuna-7B's shapes, beside the
estimates (docs/SCALING.md for vLLM; docs/parts/eng-hf.md for this engine).

The configs are built in code (nothing is downloaded): LLaVA-1.5-7B = CLIP ViT-L/14 at 336 px
(576 image tokens) + Llama-7B (4096 wide, 32 layers, MLP 11008); InstructBLIP-Vicuna-7B = EVA
ViT-g/14 at 224 px (1408 wide, 39 layers) + Q-Former (768 wide, 12 layers, 32 queries) +
Vicuna-7B (Llama-7B shape). The vocabulary is the tokenizer trained here (2,048 tokens) instead
of 32,000: the output layer is ~2% of a 7B's FLOPs per token, so the rate is at most ~2% high.
Every caption has exactly `--tokens` tokens (min_new_tokens = max_new_tokens), so the figure is
the engine's rate at that length, not a guess at where random weights stop.

Needs torch, transformers, pillow and numpy, no vLLM and no Ray: the engine is driven in this
process as an actor would drive it (`generate(keys, images)` per batch), in bf16 on `cuda`.
About 3-5 minutes on one H100/H200 with the defaults (est.). Run:
    python bench/gpu_recaption_check.py [--models llava instructblip] [--batch-size N]
        [--tokens 256] [--batches 3]
256 tokens: a static batch decodes until its longest caption ends, at the cap nearly always.
`--tiny` runs the same code on tiny shapes on the CPU (float32), to check the script itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Images/s per H100 (pessimistic, central, optimistic), *est.*: the transformers engine at the
# 256-token cap (docs/parts/eng-hf.md, at batch 64 for llava and 128 for instructblip), and
# vLLM at ~200 tokens per caption (docs/SCALING.md section 3; InstructBLIP had vLLM run it).
ESTIMATE_HF = {"llava": (2, 5, 8), "instructblip": (5, 14, 23)}
SCALING_VLLM = {"llava": "20 (8-30)", "instructblip": "25-30 (had vLLM run it)"}
BATCH = {"llava": 64, "instructblip": 128}  # what fits an 80 GB GPU (docs/parts/eng-hf.md)

_LLAMA_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "head_dim": 128,
    "max_position_embeddings": 4096,
}
_CLIP_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
}
_EVA_G_224 = {
    "hidden_size": 1408,
    "intermediate_size": 6144,
    "num_hidden_layers": 39,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
}
_QFORMER = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "cross_attention_frequency": 2,
}


def build(kind: str, tiny: bool):
    """(model config for the engine, model, processor): random weights, built in place."""
    from toyworld import tiny_models as T

    if kind == "llava":
        from transformers import LlavaForConditionalGeneration

        tok = T.llava_tokenizer(T.train_bpe(T._LLAVA_SPECIALS))
        size = 56 if tiny else 336
        cfg = T.llava_config(tok) if tiny else T.llava_config(tok, _LLAMA_7B, _CLIP_L_336)
        processor = T.llava_processor(tok, size, 14)
        return "llava-1.5", LlavaForConditionalGeneration, cfg, processor
    from transformers import InstructBlipForConditionalGeneration

    tok, qtok = T.instructblip_tokenizers("llama")
    if tiny:
        cfg = T.instructblip_config(tok, qtok)
        size = 56
    else:
        cfg = T.instructblip_config(tok, qtok, "llama", _EVA_G_224, _QFORMER, _LLAMA_7B, 32)
        size = 224
    processor = T.instructblip_processor(tok, qtok, size, cfg.num_query_tokens)
    return "instructblip", InstructBlipForConditionalGeneration, cfg, processor


def measure(kind: str, args) -> dict:
    import numpy as np
    import torch

    from pipeline.recaption_config import ModelConfig
    from recaption.engine_hf import TransformersEngine

    on_gpu = not args.tiny
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    family, cls, config, processor = build(kind, args.tiny)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:  # weights are drawn where they live: no 14 GB pass through the CPU
            model = cls(config)
    finally:
        torch.set_default_dtype(default)
    build_s = time.perf_counter() - t0
    mcfg = ModelConfig(
        name=kind,
        family=family,
        path="(built in code)",
        max_tokens=args.tokens,
        temperature=0.0,
        gpus_per_replica=1 if on_gpu else 0,
        engine="transformers",
        engine_kwargs={"generate_kwargs": {"min_new_tokens": args.tokens}},
    )
    engine = TransformersEngine(mcfg, loaded=(model, processor))
    rng = np.random.default_rng(0)
    side = 384  # decoded web images arrive at a few hundred px; the processor resizes them
    n = args.batch_size or (8 if args.tiny else BATCH[kind])
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]

    def batch(i: int):
        keys = [f"{i:05d}{j:04d}" for j in range(n)]
        t = time.perf_counter()
        gens = engine.generate(keys, images)
        if on_gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - t, gens

    batch(0)  # warm-up: kernels, allocator
    times, tokens = [], 0
    for i in range(1, args.batches + 1):
        dt, gens = batch(i)
        times.append(dt)
        tokens += sum(g.generated_tokens for g in gens)
    seconds = sum(times)
    out = {
        "model": kind,
        "shape": "tiny" if args.tiny else "7B",
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": n,
        "tokens_per_caption": tokens / (n * args.batches),
        "prompt_tokens": gens[0].prompt_tokens,
        "images_per_s": n * args.batches / seconds,
        "output_tokens_per_s": tokens / seconds,
        "seconds_per_batch": [round(t, 3) for t in times],
        "build_s": round(build_s, 1),
    }
    if on_gpu:
        out["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["llava", "instructblip"])
    parser.add_argument("--batch-size", type=int, help="default: 64 llava, 128 instructblip")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per caption, fixed")
    parser.add_argument("--batches", type=int, default=3, help="timed batches after a warm-up")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU")
    args = parser.parse_args()
    import torch

    if not args.tiny:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --tiny to check the script on the CPU")
    for kind in args.models:
        if kind not in SCALING_VLLM:
            sys.exit(f"--models: {kind!r} is not one of {sorted(SCALING_VLLM)}")
        r = measure(kind, args)
        if not args.tiny:
            gc.collect()  # the first model's weights are garbage by now: free them
            torch.cuda.empty_cache()
        print(json.dumps(r))
        lo, mid, hi = ESTIMATE_HF[kind]
        print(
            f"{kind} ({r['shape']}, {r['device']}, {r['dtype']}, batch {r['batch_size']}, "
            f"{r['tokens_per_caption']:.0f} tokens/caption): {r['images_per_s']:.2f} images/s, "
            f"{r['output_tokens_per_s']:.0f} output tokens/s"
        )
        print(
            f"  estimates per H100: transformers engine {mid} ({lo}-{hi}) at 256 tokens, batch "
            f"{BATCH[kind]} (docs/parts/eng-hf.md); vLLM {SCALING_VLLM[kind]} at ~200 tokens "
            "(docs/SCALING.md section 3)"
        )
        if args.tiny:
            print("  (tiny shapes on the CPU: checks the script, says nothing about a GPU)")


if __name__ == "__main__":
    main()
