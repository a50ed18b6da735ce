"""One recaption config with one model of every family, run on the demo's input shards, on CPU.

    python -m toyworld.all_families [--shards demo_out/build/ingest/shards] [--out all_families]

What it runs (`pipeline.recaption.run`, Ray executor, one replica each):
- `llava-1.5` and `qwen2-vl`: the trained toy captioners (`toyworld/weights`), which describe
  the toy scenes (docs/RESULTS.md gives their accuracy);
- every other family: the tiny random checkpoints of `longcap tiny-models` (their captions are
  noise; what is checked is that the family loads, is prompted and writes every key once):
  `qwen2.5-vl`, `blip-2`, `internvl` (vLLM), `instructblip` (the `transformers` engine: vLLM
  cannot run it), and `sharegpt4v`, whose released layout is first converted with
  `longcap convert-sharegpt4v`.
LoTLIP's three captioners are among them: InstructBLIP, LLaVA-1.5 and ShareGPT4V.

It prints, per model, its engine, where its prompt came from (the checkpoint's chat template or
the family's format), images captioned and failures, and checks that every input key appears
exactly once in every model's output. Exit 0 when every unit is done and every key is there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

DEMO_SHARDS = Path("demo_out/build/ingest/shards")


def model_entries(models: Path, max_tokens: int) -> list[dict[str, Any]]:
    """The run.yaml `models:` list: one model per family (the trained toy captioners where there
    is one), built under `models` (tiny checkpoints, the converted ShareGPT4V)."""
    from recaption.convert_sharegpt4v import convert_sharegpt4v
    from toyworld.captioners import WEIGHTS
    from toyworld.tiny_models import make_tiny_models

    tiny = make_tiny_models(
        models, families=("qwen2.5-vl", "blip-2", "internvl", "instructblip", "sharegpt4v")
    )
    converted = models / "sharegpt4v-hf"
    if not converted.exists():
        convert_sharegpt4v(tiny["sharegpt4v"], converted)
    base = {"max_tokens": max_tokens, "replicas": 1, "batch_size": 64}
    return [
        {"name": "toy-llava", "family": "llava-1.5", "path": str(WEIGHTS / "llava-1.5"), **base},
        {"name": "toy-qwen", "family": "qwen2-vl", "path": str(WEIGHTS / "qwen2-vl"), **base},
        {"name": "tiny-sharegpt4v", "family": "sharegpt4v", "path": str(converted), **base},
        {
            "name": "tiny-instructblip",
            "family": "instructblip",
            "path": str(tiny["instructblip"]),
            "engine": "transformers",
            **{**base, "batch_size": 16},
        },
        {
            "name": "tiny-qwen2.5-vl",
            "family": "qwen2.5-vl",
            "path": str(tiny["qwen2.5-vl"]),
            **base,
        },
        {"name": "tiny-blip-2", "family": "blip-2", "path": str(tiny["blip-2"]), **base},
        {"name": "tiny-internvl", "family": "internvl", "path": str(tiny["internvl"]), **base},
    ]


def check_every_key_once(shards: Path, output: Path, names: list[str]) -> dict[str, str]:
    """Per model, "ok" or what is wrong: every input key of the shards exactly once."""
    import pyarrow.parquet as pq

    from shards.readers import shard_names

    keys: set[str] = set()
    for shard in shard_names(shards):
        keys |= set(pq.read_table(shards / f"{shard}.parquet", columns=["key"])["key"].to_pylist())
    verdict = {}
    for name in names:
        found: list[str] = []
        for unit in sorted((output / "captions" / name).glob("*.parquet")):
            found += pq.read_table(unit, columns=["key"])["key"].to_pylist()
        dup = len(found) - len(set(found))
        missing = len(keys - set(found))
        verdict[name] = "ok" if not dup and not missing else f"{missing} missing, {dup} repeated"
    return verdict


def prompt_source(entry: dict[str, Any]) -> str:
    """Where the model's prompt comes from: "checkpoint (<file>)" or "family (<format>)"."""
    from types import SimpleNamespace

    from recaption.prompts import prompt_renderer

    renderer = prompt_renderer(SimpleNamespace(trust_remote_code=False, **entry))
    return f"{renderer.source} ({renderer.detail})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toyworld.all_families", description=__doc__)
    parser.add_argument("--shards", type=Path, default=DEMO_SHARDS, help="input shards")
    parser.add_argument("--out", type=Path, default=Path("all_families"), help="work folder")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if not (args.shards.is_dir() and any(args.shards.glob("*.parquet"))):
        print(
            f"all_families: error: no input shards in {args.shards}; run `make demo` first "
            "(it writes demo_out/build/ingest/shards) or pass --shards",
            file=sys.stderr,
        )
        return 2
    import yaml

    from pipeline.recaption import main as recaption_main

    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    output = args.out / "recaption"
    shutil.rmtree(output, ignore_errors=True)
    entries = model_entries(args.out / "models", args.max_tokens)
    config = args.out / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": str(args.shards.resolve()),
                "output": str(output.resolve()),
                "models": entries,
            },
            sort_keys=False,
        )
    )
    print(f"all_families: {len(entries)} models, one per family -> {config}", flush=True)
    code = recaption_main(["--config", str(config)])
    report = json.loads((output / "recaption_report.json").read_text())
    verdict = check_every_key_once(args.shards, output, [e["name"] for e in entries])
    print(f"\n{'model':<18} {'family':<12} {'engine':<13} {'captioned':>10}  keys  prompt from")
    for e in entries:
        m = report["models"][e["name"]]
        print(
            f"{e['name']:<18} {e['family']:<12} {e.get('engine', 'vllm'):<13} "
            f"{m['captioned']:>5}/{m['images']:<4}  {verdict[e['name']]:<4}  {prompt_source(e)}"
        )
    print(f"all_families: {time.perf_counter() - t0:.0f} s, recaption exit code {code}")
    ok = code == 0 and all(v == "ok" for v in verdict.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
