"""GPU check of the `base` preset (BERT-base + ViT-B/16 shapes, K corner tokens): step time and
peak memory in bf16 autocast at batch 256, context 192, on synthetic tensors. Prints one JSON
object with the GPU's name. Not a test; needs CUDA. Run: `python bench/gpu_train_check.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch

    from train_hooks.loss import lotlip_loss
    from train_hooks.model import LoTLIP, preset

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--context-length", type=int, default=192)
    ap.add_argument("--corner-tokens", type=int, nargs="+", default=[2, 0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lock-image", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA not available"}))
        return 1
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    results = []
    for k in args.corner_tokens:
        torch.manual_seed(0)
        # LiT through the model config (issue 8): the forward no longer takes lock_image.
        lit = {"lock_image": True} if args.lock_image else {}
        model = LoTLIP(preset("base", num_corner=k, **lit)).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        bs, n = args.batch_size, args.context_length
        ids = torch.randint(1000, 30000, (bs, n), device=dev)
        ids[:, 0] = 101
        ids[:, 1 : k + 1] = torch.arange(30522, 30522 + k, device=dev)
        mask = torch.ones(bs, n, dtype=torch.bool, device=dev)
        short = ids[:, :32].clone()
        short_mask = mask[:, :32].clone()
        px = torch.randn(bs, 3, 224, 224, device=dev)
        torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(args.steps + 3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(px, short, short_mask, ids, mask)
            loss, _ = lotlip_loss(out["image_features"], out["text_features"], out["logit_scale"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        times.sort()
        results.append(
            {
                "corner_tokens": k,
                "step_ms_median": 1000 * times[len(times) // 2],
                "samples_per_s": bs / times[len(times) // 2],
                "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
                "loss": float(loss),
            }
        )
        del model, opt
        torch.cuda.empty_cache()
    print(
        json.dumps(
            {
                "gpu": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "preset": "base",
                "batch_size": args.batch_size,
                "context_length": args.context_length,
                "precision": "bf16 autocast",
                "lock_image": args.lock_image,
                "results": results,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
