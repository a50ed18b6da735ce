"""GPU check of corner tokens at speed: the `base` preset (BERT-base + ViT-B/16, LoTLIP's LiT
setting) in bf16 autocast, K = 2 corner tokens against K = 0, with the dense [B, L, L] corner
mask (SDPA) and with FlexAttention's block mask. Synthetic tensors; nothing is downloaded.

For each variant it prints the median full training step (image tower, both text encodings,
loss, backward, AdamW) and the median text-tower step (long text with corners, forward and
backward), the ratio of each to K = 0, and the expectation (L+K)/L: corner tokens add K
positions to an L-token text, so if attention kernels were equally fast the text-tower ratio
would be about (L+K)/L (attention is O(n^2), but at L ~ 192 the O(n) matmuls dominate).

It also NAMES the attention kernel: for the exact q/k/v/mask shapes of a layer, which SDPA
backends accept the inputs (each tried alone under `sdpa_kernel`), which one PyTorch picks
(`torch._fused_sdp_choice`), and the attention-like CUDA kernels a profiled text step launched.
A dense boolean mask is refused by the flash backend, so SDPA falls back to the memory-efficient
(or cuDNN, or math) kernel; K = 0 pays that too, as the padding mask is dense as well.

Needs CUDA, torch and this repository only (transformers/timm are not imported); about two
minutes on one H100/H200 (FlexAttention compiles once, ~1 min). Run:
    python bench/gpu_train_check.py [--batch-size 256 --context-length 192 --steps 10]
`--device cpu --preset tiny` runs the same code paths on CPU to check the script itself
(FlexAttention has no CPU backward in torch 2.13, so its variants are skipped there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_ATTN_WORDS = ("flash", "fmha", "attention", "attn", "sdp", "cudnn", "softmax", "triton_tem")


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def sdpa_backends(model, ids, mask, dev, dtype) -> dict:
    """Which SDPA backends take a text layer's q/k/v and the dense corner mask, and which one
    PyTorch's dispatcher chooses, for exactly the shapes the model runs."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from train_hooks.model import corner_attention_mask

    layer = model.text.layers[0].attn
    b, n = ids.shape
    hd = model.cfg.text_width // layer.heads
    q, k, v = (torch.randn(b, layer.heads, n, hd, device=dev, dtype=dtype) for _ in range(3))
    dense = corner_attention_mask(model.num_corner, mask)[:, None]
    out: dict = {"q_shape": list(q.shape), "dtype": str(dtype)}
    for name, m in (("dense_mask", dense), ("no_mask", None)):
        accepted = {}
        for be in (
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.CUDNN_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.MATH,
        ):
            try:
                with sdpa_kernel([be]):
                    F.scaled_dot_product_attention(q, k, v, m)
                _sync(dev)
                accepted[be.name] = True
            except RuntimeError as e:  # "No available kernel", with the reasons as warnings
                accepted[be.name] = str(e).splitlines()[0][:120]
        chosen = None
        try:  # private but stable since 2.0: the dispatcher's own choice
            chosen = SDPBackend(torch._fused_sdp_choice(q, k, v, m, 0.0, False)).name
        except Exception as e:  # noqa: BLE001 - informative only
            chosen = f"unknown ({type(e).__name__})"
        out[name] = {"accepted": accepted, "dispatcher_choice": chosen}
    return out


def profiled_kernels(fn, dev) -> list[str]:
    """Names of attention-like kernels launched by fn (CUDA) or ops run (CPU), most time first."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        _sync(dev)
    rows = []
    for e in prof.key_averages():
        name = e.key
        t = getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0) or 0
        if dev.type != "cuda":
            t = e.cpu_time_total
        if name.startswith("autograd::") or name.endswith("Backward0"):
            continue  # wrappers around the kernels listed anyway
        if any(w in name.lower() for w in _ATTN_WORDS):
            rows.append((t, name))
    rows.sort(reverse=True)
    return [f"{name[:110]} ({t / 1000:.1f} ms)" for t, name in rows[:6]]


def run_variant(args, k: int, attention: str, dev, dtype) -> dict:
    import torch

    from train_hooks.loss import LoTLIPLoss
    from train_hooks.model import LoTLIP, preset

    objective = LoTLIPLoss()
    torch.manual_seed(0)
    lock = args.image_tower == "locked"
    cfg = preset(args.preset, num_corner=k, text_attention=attention, lock_image=lock)
    with torch.device(dev):
        model = LoTLIP(cfg)
    model.train()
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=dev.type == "cuda"
    )
    bs, L = args.batch_size, args.context_length
    n = L + k  # L text positions ([CLS] + text + [SEP]) plus the K corners
    ids = torch.randint(1000, 30000, (bs, n), device=dev)
    ids[:, 0] = 101
    ids[:, 1 : k + 1] = torch.arange(cfg.vocab_size, cfg.vocab_size + k, device=dev)
    mask = torch.ones(bs, n, dtype=torch.bool, device=dev)
    short, short_mask = ids[:, :32].clone(), mask[:, :32].clone()
    px = torch.randn(bs, 3, cfg.image_size, cfg.image_size, device=dev)
    amp = torch.autocast(dev.type, dtype=dtype)

    def step() -> float:
        with amp:
            out = model(px, short, short_mask, ids, mask)
        loss = objective(**out)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    def text_step() -> None:
        with amp:
            z = model.encode_text(ids, mask, with_corners=True)
        z.float().square().sum().backward()
        model.zero_grad(set_to_none=True)

    def timed(fn, reps: int) -> list[float]:
        out = []
        for i in range(reps + 3):  # 3 warm-up runs (compilation, allocator, autotuning)
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            if i >= 3:
                out.append(time.perf_counter() - t0)
        return out

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_t = timed(step, args.steps)
    text_t = timed(text_step, args.steps)
    res = {
        "corner_tokens": k,
        "attention": attention,
        "seq_len": n,
        "step_ms": 1000 * statistics.median(step_t),
        "text_ms": 1000 * statistics.median(text_t),
        "samples_per_s": bs / statistics.median(step_t),
        "loss": step(),
        "kernels": profiled_kernels(text_step, dev),
    }
    if dev.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if attention == "dense":
        res["sdpa"] = sdpa_backends(model, ids, mask, dev, dtype)
    return res


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--context-length", type=int, default=192, help="L: text positions")
    ap.add_argument("--corner-tokens", type=int, default=2, help="K, timed against K = 0")
    ap.add_argument("--attention", nargs="+", default=["dense", "flex"], help="paths at K")
    ap.add_argument("--flex-baseline", action="store_true", help="also time flex at K = 0")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--image-tower", choices=["locked", "trained"], default="locked")
    ap.add_argument("--preset", default="base")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA not available; `--device cpu --preset tiny` checks "
                          "the script only"}))  # fmt: skip
        return 1
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name()
    else:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        name = "cpu"
    dtype = torch.bfloat16
    L, K = args.context_length, args.corner_tokens
    results = []
    # K = 0 with the dense path is the baseline of every ratio: it is what training without
    # corners runs today. `--flex-baseline` adds flex at K = 0 (one more compilation).
    variants = [(0, "dense")] + [(K, att) for att in args.attention]
    if args.flex_baseline:
        variants.append((0, "flex"))
    for k, att in variants:
        if att == "flex" and dev.type != "cuda":
            print(f"skip flex on {dev.type}: no FlexAttention backward there", file=sys.stderr)
            continue
        try:
            results.append(run_variant(args, k, att, dev, dtype))
        except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others
            print(f"K={k} {att}: failed: {type(e).__name__}: {e}", file=sys.stderr)
            results.append({"corner_tokens": k, "attention": att, "error": repr(e)[:2000]})
        if dev.type == "cuda":
            torch.cuda.empty_cache()  # the previous variant's model is gone with its frame
    base = results[0]
    print(f"expected text-tower ratio (L+K)/L = {(L + K) / L:.4f} (L={L}, K={K})", file=sys.stderr)
    for r in results:
        if "error" in r or "error" in base:
            continue
        r["step_ratio_to_K0_dense"] = r["step_ms"] / base["step_ms"]
        r["text_ratio_to_K0_dense"] = r["text_ms"] / base["text_ms"]
        print(
            f"K={r['corner_tokens']} {r['attention']:>5}: step {r['step_ms']:.1f} ms "
            f"(x{r['step_ratio_to_K0_dense']:.3f}), text {r['text_ms']:.1f} ms "
            f"(x{r['text_ratio_to_K0_dense']:.3f})",
            file=sys.stderr,
        )
    for r in results:
        if "sdpa" in r:
            s = r["sdpa"]["dense_mask"]
            print(
                f"K={r['corner_tokens']} dense mask: SDPA picks {s['dispatcher_choice']}; "
                f"accepted: {[b for b, ok in s['accepted'].items() if ok is True]}",
                file=sys.stderr,
            )
    print(
        json.dumps(
            {
                "gpu": name,
                "torch": torch.__version__,
                "preset": args.preset,
                "image_tower": args.image_tower,
                "batch_size": args.batch_size,
                "context_length": L,
                "precision": "bf16 autocast",
                "expected_text_ratio_(L+K)/L": (L + K) / L,
                "results": results,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
