"""The toy experiment: does training on the captioners' long captions make a model understand long
texts, and what do corner tokens add? LoTLIP's comparison (short captions vs long captions vs
long captions with corner tokens), reproduced on scenes whose truth is known, on a CPU.

`longcap toy experiment --seed S --out DIR [--quick]`:

1. **Data, through the real pipeline.** N scenes drawn from seed S are served from 127.0.0.1 as a
   URL list of (url, alt-text, truth); `longcap build` downloads them with img2dataset,
   recaptions every image with the two trained captioners (`toyworld/weights/llava-1.5` and
   `qwen2-vl`, vLLM's CPU build in a local Ray) and assembles the shards. The alt-text names only
   the most salient object (`toyworld.scenes.alt_text`).
2. **Held-out scenes** (a stream no training set draws from, different for every seed) as
   shards whose long text is `toyworld.heldout.truth_text`: the truth in a phrasing neither
   captioner writes, so retrieval with it measures what a model learned about scenes, not a
   captioner's sentence pattern. Their short text is the alt-text.
3. **Variants**, all on the same shards, with the same frozen image tower
   (`toyworld/weights/image_tower`, pretrained on toy scenes as ImageNet stands in for real
   images; LiT, as LoTLIP) and the same text tower shape, seed and schedule:
   - `short`: the alt-text only (T = 0 long texts, no corner tokens);
   - `long`: alt-text + one long text per image of k = 4 sub-captions drawn from both
     captioners (`--text-mode k --subcaptions 4`), K = 0;
   - `lotlip`: the same with K = 2 corner tokens.
   The sweep (LoTLIP's Figure 2) trains K = 2 models on k = 1 and 2 sub-captions per long text
   and on texts filling the context (`fill`, the trainer's default); k = 0 is `short` and k = 4
   is `lotlip`. Why k = 4 and not fill for the variants: on toy scenes, fill texts (nearly every
   sentence of both captions, in caption order) teach a shortcut (a sentence's place stands for
   its cell) that fails on held-out texts in another phrasing; docs/RESULTS.md shows it.
4. **Evaluation** on the held-out scenes: long-text and short-text retrieval, R@1 and R@5 both
   ways (`train_hooks.evaluate.evaluate_retrieval`), and the same for the untrained model.

Writes DIR/results.json (`{"seed": S, "variants": {"short": {...}, "long": {...},
"lotlip": {...}}, "sweep": {...}, "untrained": {...}, ...}`, each variant with
`long_i2t_r1`, `long_t2i_r1`, `short_i2t_r1`, `short_t2i_r1` and the R@5s, in percent) and
DIR/results.png. `--quick` is the same on a small scale (for tests: minutes, not a result).
`summarize` turns several runs' results.json into the table of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from toyworld.captioners import PROMPTS, WEIGHTS
from toyworld.heldout import TRUTH_MODEL, make_heldout_shards

IMAGE_TOWER = WEIGHTS / "image_tower"
CAPTIONERS = {"toy-llava": "llava-1.5", "toy-qwen": "qwen2-vl"}  # model name -> family
VARIANTS = ("short", "long", "lotlip")
LONG_TEXT = {"text_mode": "k", "subcaptions": 4}  # the long texts of `long` and `lotlip`
SWEEP = ("k1", "k2", "fill")  # with short (k = 0) and lotlip (k = 4): LoTLIP's Figure 2
HELDOUT_SEED = 1_000_003  # + the experiment's seed: never a training stream
METRICS = {  # results.json key -> evaluate_retrieval key
    "long_i2t_r1": "long/i2t_R@1",
    "long_t2i_r1": "long/t2i_R@1",
    "short_i2t_r1": "short/i2t_R@1",
    "short_t2i_r1": "short/t2i_R@1",
    "long_i2t_r5": "long/i2t_R@5",
    "long_t2i_r5": "long/t2i_R@5",
    "short_i2t_r5": "short/i2t_R@5",
    "short_t2i_r5": "short/t2i_R@5",
}


@dataclass(frozen=True)
class Scale:
    """How big one experiment is."""

    train_images: int
    heldout_images: int
    steps: int
    batch_size: int
    lr: float
    sweep: bool


FULL = Scale(train_images=3000, heldout_images=500, steps=800, batch_size=64, lr=2e-3, sweep=True)
QUICK = Scale(train_images=300, heldout_images=100, steps=300, batch_size=32, lr=2e-3, sweep=False)


def variant_config(name: str) -> dict[str, Any]:
    """TrainConfig fields that make a variant (`short`, `long`, `lotlip`; `k1`, `k2`, `fill` of
    the sweep; `long-fill`: fill texts without corner tokens, for docs/RESULTS.md)."""
    if name == "short":
        return {"long_texts": 0, "corner_tokens": 0}
    if name == "long":
        return {"corner_tokens": 0, **LONG_TEXT}
    if name == "lotlip":
        return {"corner_tokens": 2, **LONG_TEXT}
    if name in ("fill", "long-fill"):
        return {"corner_tokens": 2 if name == "fill" else 0, "text_mode": "fill"}
    if name.startswith("k") and name[1:].isdigit():
        return {"corner_tokens": 2, "text_mode": "k", "subcaptions": int(name[1:])}
    raise ValueError(f"no variant {name!r}; one of {[*VARIANTS, *SWEEP, 'long-fill']}")


def build_config(path: Path, url_list: Path, output: Path, captioners: Path) -> Path:
    """The `longcap build` config of the experiment's data: the two trained captioners."""
    import yaml

    cfg = {
        "output": str(output.resolve()),
        "ingest": {
            "url_list": str(url_list.resolve()),
            "image_size": 96,
            "number_sample_per_shard": 500,
            "threads": 8,
            # The scenes are served from 127.0.0.1, which the URL policy refuses unless listed.
            "allowed_networks": ["127.0.0.1/32"],
        },
        "models": [
            {
                "name": name,
                "family": family,
                "path": str((captioners / family).resolve()),
                "prompts": [PROMPTS[0]],
                "max_tokens": 160,
                "temperature": 0.0,
                "max_model_len": 512,
            }
            for name, family in CAPTIONERS.items()
        ],
        "assemble": {"formats": ["parquet"]},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def build_data(
    out: Path, n: int, seed: int, captioners: Path = WEIGHTS, bad_rows: bool = False
) -> Path:
    """Scenes served from 127.0.0.1 -> img2dataset -> recaption -> shards (`longcap build`);
    returns the shards folder. `bad_rows`: the URL list also has the awkward rows real lists
    have (a 404, a duplicate, an HTML page, ...), as the demo shows."""
    from pipeline.build import main as build
    from toyworld.loopback import make_url_list, serve

    (out / "www").mkdir(parents=True, exist_ok=True)
    with serve(out / "www") as base_url:
        url_list = make_url_list(out, base_url, n=n, bad_rows=bad_rows, scenes=True, seed=seed)
        print(f"      {url_list} -> {base_url}/", flush=True)
        config = build_config(out / "build.yaml", url_list, out / "build", captioners)
        print(f"      longcap build --config {config}", flush=True)
        rc = build(["--config", str(config)])
    if rc:
        raise RuntimeError(f"longcap build --config {config} exited {rc}")
    return out / "build" / "shards"


def train_variant(
    name: str, shards: Path, out: Path, scale: Scale, seed: int, tower: Path = IMAGE_TOWER
) -> Path:
    """Train one variant into out/<name>; returns the run folder."""
    from train_hooks.train import train

    run = out / name
    train(variant_train_config(name, shards, run, scale, seed, tower))
    return run


def variant_train_config(
    name: str, shards: Path, run: Path, scale: Scale, seed: int, tower: Path = IMAGE_TOWER
):
    """The `TrainConfig` of one variant (the same command line as `longcap train`)."""
    from train_hooks.train import TrainConfig

    return TrainConfig(
        shards=str(shards),
        out=str(run),
        preset="tiny",
        steps=scale.steps,
        batch_size=scale.batch_size,
        lr=scale.lr,
        warmup=max(10, scale.steps // 10),
        seed=seed,
        num_workers=1,
        vision_weights=str(tower),
        lock_image=True,
        progress=False,
        **variant_config(name),
    )


def evaluate(model, tok, heldout: Path) -> dict[str, float]:
    """The held-out figures of one model, under results.json's names."""
    from train_hooks.evaluate import evaluate_retrieval

    res = evaluate_retrieval(model, tok, heldout, models=[TRUTH_MODEL])
    return {ours: round(res[theirs], 2) for ours, theirs in METRICS.items()}


def untrained(heldout: Path, seed: int, tower: Path = IMAGE_TOWER) -> dict[str, float]:
    """The figures before any training: the frozen tower with a random text tower."""
    import torch

    from train_hooks.model import build_model, preset
    from train_hooks.train import TrainConfig, make_tokenizer

    torch.manual_seed(seed)
    cfg = TrainConfig(shards="", out="", corner_tokens=2)
    model = build_model(preset("tiny", num_corner=2, vision_weights=str(tower), lock_image=True))
    return evaluate(model.eval(), make_tokenizer(cfg), heldout)


def short_r1_ceiling(heldout: Path) -> float:
    """The best short-text R@1 any model can reach on these held-out scenes, in percent: many
    scenes share an alt-text ("a large red circle"), and a text equal to k images' texts finds
    its own image first at best once in k (the same bound holds image to text)."""
    from collections import Counter

    from train_hooks.evaluate import read_eval_set

    caps = [r["caption"] for r in read_eval_set(heldout)]
    count = Counter(caps)
    return round(100 * sum(1 / count[c] for c in caps) / len(caps), 2)


def run_experiment(
    out: str | Path,
    seed: int = 0,
    quick: bool = False,
    captioners: Path = WEIGHTS,
    tower: Path = IMAGE_TOWER,
    scale: Scale | None = None,
) -> dict[str, Any]:
    """The whole experiment (module docstring); writes and returns results.json's content."""
    from train_hooks.evaluate import load_checkpoint

    scale = scale or (QUICK if quick else FULL)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(what: str, since: float) -> float:
        now = time.perf_counter()
        seconds[what] = round(now - since, 1)
        print(f"[toy experiment] {what}: {seconds[what]:.0f}s", flush=True)
        return now

    shards = build_data(out / "data", scale.train_images, seed, captioners)
    t = lap("build", t0)
    heldout = make_heldout_shards(out / "heldout", scale.heldout_images, HELDOUT_SEED + seed)
    from shards.dataset_stats import caption_accuracy

    accuracy = caption_accuracy(shards)
    results: dict[str, Any] = {
        "seed": seed,
        "quick": quick,
        "scale": asdict(scale),
        "caption_accuracy": {
            m: {k: s[k] for k in ("recall", "hallucination_rate", "misplaced_rate")}
            for m, s in (accuracy or {}).get("by_model", {}).items()
        },
        "untrained": untrained(heldout, seed, tower),
        "short_r1_ceiling": short_r1_ceiling(heldout),
        "variants": {},
        "sweep": {},
    }
    t = lap("held-out + untrained", t)
    names = [*VARIANTS, *SWEEP] if scale.sweep else list(VARIANTS)
    for name in names:
        run = train_variant(name, shards, out / "runs", scale, seed, tower)
        model, tok, _ = load_checkpoint(run)
        figures = evaluate(model, tok, heldout)
        (results["variants"] if name in VARIANTS else results["sweep"])[name] = figures
        t = lap(f"train + eval {name}", t)
        print(json.dumps({name: figures}), flush=True)
    results["sweep_long_i2t_r1"] = sweep_points(results)
    seconds["total"] = round(time.perf_counter() - t0, 1)
    results["seconds"] = seconds
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out / "results.png")
    return results


def sweep_points(results: dict[str, Any]) -> dict[str, float]:
    """Long-text i2t R@1 against sub-captions per training text: 0 (short), 1, 2, 4 (lotlip),
    fill; the points the run has."""
    v, sw = results["variants"], results["sweep"]
    points = {"0": v["short"], "1": sw.get("k1"), "2": sw.get("k2"), "4": v["lotlip"]}
    points["fill"] = sw.get("fill")
    return {k: p["long_i2t_r1"] for k, p in points.items() if p is not None}


def plot(results: dict[str, Any], path: Path) -> Path:
    """Left: the three variants' R@1 on held-out scenes; right: the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    keys = ["long_i2t_r1", "long_t2i_r1", "short_i2t_r1", "short_t2i_r1"]
    width = 0.8 / len(VARIANTS)
    for i, v in enumerate(VARIANTS):
        vals = [results["variants"][v][k] for k in keys]
        a.bar([j + i * width for j in range(len(keys))], vals, width, label=v)
    a.set_xticks([j + width for j in range(len(keys))])
    a.set_xticklabels(["long i2t", "long t2i", "short i2t", "short t2i"])
    a.set_ylabel("R@1 (%) on held-out scenes")
    a.legend()
    a.set_title(f"toy world, seed {results['seed']}")
    sweep = results["sweep_long_i2t_r1"]
    b.plot(list(sweep), list(sweep.values()), marker="o")
    b.set_xlabel("sub-captions per long training text")
    b.set_ylabel("long-text i2t R@1 (%)")
    b.set_title("sweep (LoTLIP Fig. 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summarize(paths: list[Path]) -> dict[str, Any]:
    """Mean and standard deviation over runs (results.json files) of every variant's figures and
    of the sweep, and whether LoTLIP's ordering held in each run."""
    runs = [json.loads(Path(p).read_text()) for p in paths]

    def ms(values: list[float]) -> dict[str, float]:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": round(statistics.mean(values), 2), "std": round(sd, 2)}

    table = {v: {k: ms([r["variants"][v][k] for r in runs]) for k in METRICS} for v in VARIANTS}
    sweep_keys = [
        k for k in runs[0]["sweep_long_i2t_r1"] if all(k in r["sweep_long_i2t_r1"] for r in runs)
    ]
    sweep = {k: ms([r["sweep_long_i2t_r1"][k] for r in runs]) for k in sweep_keys}
    return {
        "seeds": [r["seed"] for r in runs],
        "table": table,
        "sweep_long_i2t_r1": sweep,
        "ordering_per_seed": {str(r["seed"]): ordering(r) for r in runs},
    }


def ordering(results: dict[str, Any]) -> dict[str, bool]:
    """LoTLIP's ordering in one run: lotlip >= long > short on long-text R@1 (both ways), and
    short-text R@1 of lotlip not below short's."""
    v = results["variants"]
    out = {}
    for d in ("i2t", "t2i"):
        k = f"long_{d}_r1"
        out[f"long_{d}: long > short"] = v["long"][k] > v["short"][k]
        out[f"long_{d}: lotlip >= long"] = v["lotlip"][k] >= v["long"][k]
        s = f"short_{d}_r1"
        out[f"short_{d}: lotlip >= short"] = v["lotlip"][s] >= v["short"][s]
    return out


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table shaped like LoTLIP's Table 2 (rows: variants)."""
    cols = ["long_i2t_r1", "long_t2i_r1", "short_i2t_r1", "short_t2i_r1"]
    lines = [
        "| variant | long i2t R@1 | long t2i R@1 | short i2t R@1 | short t2i R@1 |",
        "|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        cells = [
            f"{summary['table'][v][c]['mean']:.1f} ± {summary['table'][v][c]['std']:.1f}"
            for c in cols
        ]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="longcap toy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    args = p.parse_args(argv)
    return args.func(args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `toy` subcommands, for `longcap toy` and `python -m toyworld.experiment`."""
    sub = p.add_subparsers(dest="toy_command", required=True)
    e = sub.add_parser("experiment", help="build toy data, train short/long/lotlip, evaluate")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True)
    e.add_argument("--quick", action="store_true", help="small scale, for tests (minutes)")
    e.add_argument(
        "--no-sweep", action="store_true", help="only the three variants (the seeds' table)"
    )
    e.set_defaults(func=_cmd_experiment)
    s = sub.add_parser("summarize", help="mean +- std over several runs' results.json")
    s.add_argument("results", nargs="+", help="results.json files (or their folders)")
    s.add_argument("--json", default=None, help="also write the summary here")
    s.set_defaults(func=_cmd_summarize)


def _cmd_experiment(args: argparse.Namespace) -> int:
    scale = QUICK if args.quick else FULL
    if args.no_sweep:
        scale = replace(scale, sweep=False)
    res = run_experiment(args.out, args.seed, args.quick, scale=scale)
    print(json.dumps({"variants": res["variants"], "sweep": res["sweep_long_i2t_r1"]}, indent=1))
    print(f"results: {Path(args.out) / 'results.json'}, plot: {Path(args.out) / 'results.png'}")
    return 0


def _cmd_summarize(args: argparse.Namespace) -> int:
    paths = [Path(r) / "results.json" if Path(r).is_dir() else Path(r) for r in args.results]
    summary = summarize(paths)
    print(format_table(summary))
    print(
        json.dumps(
            {"sweep": summary["sweep_long_i2t_r1"], "ordering": summary["ordering_per_seed"]},
            indent=1,
        )
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
