"""`longcap plan`: measure the configured models on N of the user's images, predict the full run.

The plan runs the real pipeline on a sample, in this process and without Ray: N images are
copied from the config's input shards into one img2dataset-style shard in a scratch folder,
decoded and resized by `recaption.units.decode_shard` (timed on one core, per image size), each
model captions them through `recaption.actor.EngineWorker` (the engine of any backend, loaded
once; one warm-up call, then the timed unit as the Ray actor runs it), and the captions are
assembled into a dataset shard by `shards.assemble.assemble_shard`. From what was measured it
predicts GPU-hours, wall time on G GPUs, CPU cores per GPU, storage and cost for M images;
every predicted figure carries its formula (text) and the measured inputs it used, so a reader
can redo the arithmetic (pipeline/plan_predict.py). Rates measured on a CPU do not predict GPU
rates: the plan says so and takes `--engine-rate NAME=IMG_PER_S` (measured on one GPU, or
assumed) instead, or `--measured plan.json` to predict again without running the engines.
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import os
import random
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config_loader import ConfigError, read_yaml_mapping
from pipeline.plan_predict import PlanError, format_plan, predict
from pipeline.recaption_config import ModelConfig, RecaptionConfig, load_config
from recaption.families import get_family
from shards import schema as S
from shards.assemble import AssembleConfig
from shards.inputs import InputError, InputSample, load_image_bytes

PLAN_VERSION = 1
SAMPLE_SHARD = "00000"  # the scratch shard holding the sample
MAX_SHARDS_SPREAD = 4  # the sample is drawn from at least this many shards, where there are


@dataclass
class Sample:
    """N usable images drawn from the input shards, and what the shards read hold."""

    samples: list[InputSample] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)  # shards read to the end
    rows: int = 0  # input rows in those shards
    images: int = 0  # rows with an image in them
    shard_bytes: int = 0  # bytes of their files (.tar, .parquet, _stats.json)


def load_plan_config(path: str | Path) -> tuple[RecaptionConfig, AssembleConfig]:
    """A recaption config (run.yaml) or a build config (build.yaml: its recaption part, and its
    `assemble` section for the dataset shards); ConfigError names the file and the field."""
    p = Path(path)
    if not p.is_file():
        raise PlanError(f"--config {p}: no such file")
    if "ingest" in read_yaml_mapping(p):
        from pipeline.build import load_build_config

        build = load_build_config(p)
        return build.recaption, build.assemble
    return load_config(p), AssembleConfig()


def parse_engine_rates(items: list[str], names: list[str]) -> dict[str, float]:
    """`NAME=IMG_PER_S` pairs (--engine-rate) for the models named in the config."""
    rates: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            rate = float(value) if sep else -1.0
        except ValueError:
            rate = -1.0
        if rate <= 0 or not math.isfinite(rate):
            raise PlanError(f"--engine-rate {item!r}: write NAME=IMAGES_PER_SECOND, e.g. llava=20")
        if name not in names:
            raise PlanError(
                f"--engine-rate {item!r}: no model {name!r} in the config; one of {names}"
            )
        rates[name] = rate
    return rates


def draw_sample(cfg: RecaptionConfig, n: int, seed: int = 0) -> Sample:
    """N images with image bytes, spread over shards taken in a seeded order; the shards read
    are read to the end, so their rows, images and bytes are counted whole."""
    from shards.readers import read_shard, shard_names

    root = Path(cfg.input)
    if not root.is_dir():
        raise PlanError(f"input: {root} is not a folder of input shards (the config's `input`)")
    names = shard_names(root)
    if cfg.shards is not None:
        names = [s for s in names if s in set(cfg.shards)]
        if not names:
            raise PlanError(f"shards: none of {cfg.shards} is a shard of {root}")
    random.Random(seed).shuffle(names)
    per_shard = math.ceil(n / min(len(names), MAX_SHARDS_SPREAD))
    out, spare, seen = Sample(), [], set()
    for name in names:
        taken = 0
        for s in read_shard(root, name):
            out.rows += 1
            if s.status != S.STATUS_OK or load_image_bytes(s)[0] is None or s.key in seen:
                continue
            out.images += 1
            if taken < per_shard and len(out.samples) < n:
                seen.add(s.key)
                out.samples.append(s)
                taken += 1
            elif len(spare) < n - len(out.samples):
                seen.add(s.key)
                spare.append(s)  # used only if the other shards fall short
        out.shards.append(name)
        out.shard_bytes += sum(
            f.stat().st_size
            for f in (root / f"{name}.tar", root / f"{name}.parquet", root / f"{name}_stats.json")
            if f.exists()
        )
        if len(out.samples) >= n:
            break
    out.samples += spare[: n - len(out.samples)]
    if len(out.samples) < n:
        raise PlanError(
            f"--sample {n}: the input {root} holds only {out.images} images "
            f"({out.rows} rows in {len(out.shards)} shards); pass --sample {out.images} or less"
            if out.images
            else f"input: the shards in {root} hold no images ({out.rows} rows); check `input`"
        )
    return out


def write_sample_shard(folder: Path, samples: list[InputSample]) -> None:
    """The sample as one img2dataset shard (tar + sidecar Parquet), so that the pipeline's own
    readers, decoder, engines and assembler run on it unchanged."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from shards.tar_reader import IMAGE_EXTS

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    with tarfile.open(folder / f"{SAMPLE_SHARD}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for s in samples:
            ext = (s.image_format or "jpg").lower()
            ext = ext if ext in IMAGE_EXTS else "jpg"
            members = [(ext, load_image_bytes(s)[0])]
            if s.caption:
                members.append(("txt", s.caption.encode("utf-8", "surrogateescape")))
            for suffix, data in members:
                info = tarfile.TarInfo(f"{s.key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            rows.append({"key": s.key, "url": s.url, "caption": s.caption, "status": "success"})
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{SAMPLE_SHARD}.parquet")


def measure(
    cfg: RecaptionConfig,
    assemble_cfg: AssembleConfig,
    sample: Sample,
    work: Path,
    source: str = "config",
) -> dict[str, Any]:
    """Decode rate per core (per image size), then each model on the sample, then the dataset
    shard the captions make: the `measured` part of plan.json."""
    from recaption.units import decode_shard

    inp, rec = work / "input", work / "recaption"
    write_sample_shard(inp, sample.samples)
    decode, decoded = {}, {}
    sizes = sorted({_image_size(m) for m in cfg.models})
    # One pass untimed: the first pays for imports, codec set-up and reading the tar from disk.
    decode_shard(str(inp), SAMPLE_SHARD, sizes[0])
    for size in sizes:
        t0 = time.perf_counter()
        decoded[size] = decode_shard(str(inp), SAMPLE_SHARD, size)
        seconds = max(time.perf_counter() - t0, 1e-9)
        if not decoded[size].keys:
            first = next(iter(decoded[size].failures.values()))
            raise PlanError(
                f"input: none of the {len(sample.samples)} sampled images of {cfg.input} "
                f"decodes ({first[0]}: {first[1]}); check the input shards"
            )
        decode[str(size)] = {
            "images": len(decoded[size].keys),
            "failures": len(decoded[size].failures),
            "seconds": seconds,
            "images_per_s_per_core": len(decoded[size].keys) / seconds,
        }
    models = {}
    for i, m in enumerate(cfg.models):
        models[m.name] = _measure_model(m, decoded[_image_size(m)], rec, f"{source}: models[{i}]")
    return {
        "input": {
            "shards_read": len(sample.shards),
            "rows": sample.rows,
            "images": sample.images,
            "shard_bytes": sample.shard_bytes,
            "images_per_shard": sample.images / len(sample.shards),
            "bytes_per_image": sample.shard_bytes / sample.images,
        },
        "sample_images": len(sample.samples),
        "decode": decode,
        "models": models,
        "dataset": _measure_dataset(inp, rec, work / "shards", assemble_cfg),
    }


def _image_size(m: ModelConfig) -> int:
    return m.image_size or get_family(m.family).image_size


def _measure_model(m: ModelConfig, decoded, rec: Path, where: str) -> dict[str, Any]:
    """Load the engine (timed apart), warm it with one small call, then caption the sample as
    one unit (timed: steady state); counts come from the unit file it wrote."""
    import pyarrow.parquet as pq

    from recaption.actor import EngineWorker
    from recaption.units import unit_path, unit_record, write_unit
    from shards.tokens import count_tokens

    # As the recaption job sets for its actors: vLLM logs every step otherwise (and its CPU
    # worker warns about thread binding at every step), burying the plan. Read at vLLM's import.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING" if m.gpus_per_replica else "ERROR")
    t0 = time.perf_counter()
    try:
        worker = EngineWorker(m)
    except Exception as exc:
        raise PlanError(f"{where}: {exc}") from None
    load = getattr(worker.engine, "load_seconds", None) or time.perf_counter() - t0
    # The first call pays one-off costs (kernels, caches, the processor); kept out of the rate.
    warm = decoded.keys[: min(8, m.batch_size, len(decoded.keys))]
    if warm:
        worker.engine.generate(warm, decoded.images[: len(warm)])
    summary = worker.caption_unit(decoded, str(rec))
    del worker
    gc.collect()  # the next model's engine loads in this same process
    path = unit_path(rec, m.name, SAMPLE_SHARD)
    rows = pq.read_table(path).to_pylist()
    empty = path.with_name("empty.parquet.plan")
    write_unit(empty, [], unit_record(m, decoded.inputs))
    overhead = empty.stat().st_size
    empty.unlink()
    engine_keys = set(decoded.keys)
    engine_rows = [r for r in rows if r["key"] in engine_keys]  # not the decode failures
    texts = [r["text"] for r in rows if r["status"] == S.STATUS_OK]
    images, seconds = summary["engine_images"], max(summary["seconds"], 1e-9)
    cut = sum(r["finish_reason"] == "length" for r in engine_rows)
    words = [len(t.split()) for t in texts]
    tokens = count_tokens(texts)
    return {
        "family": m.family,
        "engine": m.engine,
        "measured_on": _measured_on(m),
        "image_size": _image_size(m),
        "max_tokens": m.max_tokens,
        "gpus_per_replica": m.gpus_per_replica,
        "replicas": m.replicas,
        "cpus_per_replica": m.cpus_per_replica,
        "load_seconds": load,
        "warmup_images": len(warm),
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "generated_tokens": summary["generated_tokens"],
        "generated_tokens_per_image": summary["generated_tokens"] / max(images, 1),
        "generated_tokens_per_s": summary["generated_tokens"] / seconds,
        "captioned": len(texts),
        "cut_at_max_tokens": cut,
        "cut_share": cut / max(images, 1),
        "caption_words_mean": sum(words) / max(len(words), 1),
        "caption_bert_tokens_mean": sum(tokens) / max(len(tokens), 1),
        "caption_rows": len(rows),
        "caption_file_bytes": path.stat().st_size,
        "caption_file_overhead_bytes": overhead,
        "caption_bytes_per_row": (path.stat().st_size - overhead) / max(len(rows), 1),
    }


def _measured_on(m: ModelConfig) -> str:
    """Where the engine ran: "gpu", "cpu", or "endpoint" (an openai engine's server)."""
    if m.engine == "openai":
        return "endpoint"
    if not m.gpus_per_replica:
        return "cpu"
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _measure_dataset(inp: Path, rec: Path, out: Path, acfg: AssembleConfig) -> dict[str, Any]:
    """Assemble the sample's dataset shard with the run's assemble options; bytes per sample."""
    from dataclasses import replace

    from shards.assemble import assemble_shard

    cfg = replace(acfg, captions=str(rec))
    stats = assemble_shard(inp, SAMPLE_SHARD, out, cfg)
    files = [out / f"{SAMPLE_SHARD}.{ext}" for ext in cfg.formats]
    files.append(out / f"{SAMPLE_SHARD}_stats.json")
    size = sum(f.stat().st_size for f in files if f.exists())
    return {
        "formats": list(cfg.formats),
        "parquet_images": cfg.parquet_images,
        "samples": stats["count"],
        "bytes": size,
        "bytes_per_sample": size / max(stats["count"], 1),
    }


def run_plan(
    config: str | Path,
    sample: int,
    target_images: int,
    gpus: int | None = None,
    gpu_hour_price: float | None = None,
    engine_rates: list[str] | None = None,
    seed: int = 0,
    keep_work: str | Path | None = None,
) -> dict[str, Any]:
    """Measure on `sample` images of the config's input and predict `target_images`: plan.json.

    `keep_work`: an empty (or new) folder to keep the scratch files in (the sample shard,
    its captions per model, its dataset shard) instead of a temporary one."""
    if sample < 1:
        raise PlanError(f"--sample {sample}: must be at least 1 image")
    _check_flags(target_images, gpus, gpu_hour_price)
    cfg, assemble_cfg = load_plan_config(config)
    rates = parse_engine_rates(engine_rates or [], [m.name for m in cfg.models])
    try:
        drawn = draw_sample(cfg, sample, seed)
    except InputError as exc:
        raise PlanError(f"{config}: input: {exc}") from None
    if keep_work is not None:
        work = Path(keep_work)
        if work.exists() and (not work.is_dir() or any(work.iterdir())):
            raise PlanError(f"--keep-work {work}: must be an empty folder or a new path")
        work.mkdir(parents=True, exist_ok=True)
        measured = measure(cfg, assemble_cfg, drawn, work, str(config))
    else:
        with tempfile.TemporaryDirectory(prefix="longcap-plan-") as tmp:
            measured = measure(cfg, assemble_cfg, drawn, Path(tmp), str(config))
    predicted, warnings = predict(measured, target_images, gpus, gpu_hour_price, rates)
    return {
        "longcap_plan_version": PLAN_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": str(Path(config).resolve()),
        "input": cfg.input,
        "sample": sample,
        "seed": seed,
        "target_images": target_images,
        "gpu_hour_price": gpu_hour_price,
        "measured": measured,
        "predicted": predicted,
        "warnings": warnings,
    }


def _check_flags(target_images: int, gpus: int | None, price: float | None) -> None:
    if target_images < 1:
        raise PlanError(f"--target-images {target_images}: must be at least 1 image")
    if gpus is not None and gpus < 1:
        raise PlanError(f"--gpus {gpus}: must be at least 1")
    if price is not None and not price >= 0:
        raise PlanError(f"--gpu-hour-price {price}: must be >= 0")


def replan(
    previous: str | Path,
    target_images: int,
    gpus: int | None = None,
    gpu_hour_price: float | None = None,
    engine_rates: list[str] | None = None,
) -> dict[str, Any]:
    """A new prediction from an earlier plan.json's measurements (no engine runs): another
    target, cluster, price, or engine rates measured on a GPU since."""
    _check_flags(target_images, gpus, gpu_hour_price)
    path = Path(previous)
    try:
        old = json.loads(path.read_text())
        measured = old["measured"]
        names = list(measured["models"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlanError(
            f"--measured {path}: not a plan.json written by longcap plan ({exc})"
        ) from None
    if old.get("longcap_plan_version") != PLAN_VERSION:
        raise PlanError(
            f"--measured {path}: plan version {old.get('longcap_plan_version')!r}, this longcap "
            f"reads {PLAN_VERSION}; measure again with --config"
        )
    rates = parse_engine_rates(engine_rates or [], names)
    predicted, warnings = predict(measured, target_images, gpus, gpu_hour_price, rates)
    return {
        **old,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "measured_from": str(path.resolve()),
        "target_images": target_images,
        "gpu_hour_price": gpu_hour_price,
        "predicted": predicted,
        "warnings": warnings,
    }


def write_plan(plan: dict[str, Any], out: str | Path) -> Path:
    from shards.writer import atomic_write_bytes

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(plan, indent=1) + "\n").encode())
    return path


__all__ = [
    "ConfigError",
    "PlanError",
    "draw_sample",
    "format_plan",
    "load_plan_config",
    "measure",
    "parse_engine_rates",
    "predict",
    "replan",
    "run_plan",
    "write_plan",
]
