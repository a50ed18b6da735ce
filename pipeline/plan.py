"""`longcap plan`: measure the configured models on N of the user's images, predict the full run.

The plan runs the real pipeline on a sample, in this process and without Ray: N images are
copied from the config's input shards into one img2dataset-style shard in a scratch folder,
decoded and resized by `recaption.units.decode_shard` (timed on one core, per image size), each
model captions them through `recaption.actor.EngineWorker` (the engine of any backend, loaded
once; one warm-up call, then the timed unit as the Ray actor runs it), and the captions are
assembled into a dataset shard by `shards.assemble.assemble_shard`. From what was measured it
predicts GPU-hours, wall time on G GPUs, CPU cores per GPU, storage and cost for M images;
every predicted figure carries its formula (text) and the measured inputs it used, so a reader
can redo the arithmetic. Rates measured on a CPU do not predict GPU rates: the plan says so and
takes `--engine-rate NAME=IMG_PER_S` (measured on one GPU, or assumed) instead.
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
from pipeline.recaption_config import ModelConfig, RecaptionConfig, load_config
from recaption.families import get_family
from shards import schema as S
from shards.assemble import AssembleConfig
from shards.inputs import InputError, InputSample, load_image_bytes

PLAN_VERSION = 1
SAMPLE_SHARD = "00000"  # the scratch shard holding the sample
CUT_WARN_SHARE = 0.05  # warn when more captions than this stop at max_tokens
MAX_SHARDS_SPREAD = 4  # the sample is drawn from at least this many shards, where there are


class PlanError(ValueError):
    """The plan cannot run; the message names the file, flag or field and what to do."""


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
            if len(out.samples) + len(spare) >= n:
                continue
            seen.add(s.key)
            if taken < per_shard and len(out.samples) < n:
                out.samples.append(s)
                taken += 1
            else:
                spare.append(s)  # used only if later shards fall short
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


def _figure(value: float | None, unit: str, formula: str, **inputs: Any) -> dict[str, Any]:
    """A predicted figure: its value, unit, formula (names from `inputs`) and those inputs."""
    return {"value": value, "unit": unit, "formula": formula, "inputs": inputs}


def predict(
    measured: dict[str, Any],
    target: int,
    gpus: int | None,
    price: float | None,
    given_rates: dict[str, float],
) -> tuple[dict[str, Any], list[str]]:
    """GPU-hours, wall time, CPU cores per GPU, storage and cost for `target` images."""
    warnings: list[str] = []
    mm, inp = measured["models"], measured["input"]
    n = measured["sample_images"]
    per_model: dict[str, Any] = {}
    for name, m in mm.items():
        gpr = m["gpus_per_replica"] or 1.0
        if not m["gpus_per_replica"]:
            warnings.append(
                f"{name}: gpus_per_replica is 0 in the config (the CPU build); the plan "
                "assumes 1 GPU per replica on the cluster"
            )
        rate = given_rates.get(name, m["images_per_s"])
        dec = measured["decode"][str(m["image_size"])]
        ok_share = dec["images"] / n  # images the decoder kept (the engine's share of M)
        engine_images = target * ok_share
        gpu_hours = engine_images / rate * gpr / 3600
        decode_cores = rate / dec["images_per_s_per_core"] / gpr
        units = math.ceil(target / inp["images_per_shard"])
        p = {
            "engine_images_per_s": {
                "value": rate,
                "source": "given (--engine-rate)" if name in given_rates else "measured",
            },
            "gpus_per_replica": gpr,
            "engine_images": _figure(
                engine_images,
                "images",
                "target_images * decoded / sample_images",
                target_images=target,
                decoded=dec["images"],
                sample_images=n,
            ),
            "gpu_hours": _figure(
                gpu_hours,
                "GPU-hours",
                "engine_images / images_per_s * gpus_per_replica / 3600",
                engine_images=engine_images,
                images_per_s=rate,
                gpus_per_replica=gpr,
            ),
            "decode_cores_per_gpu": _figure(
                decode_cores,
                "cores",
                "images_per_s / decode_images_per_s_per_core / gpus_per_replica",
                images_per_s=rate,
                decode_images_per_s_per_core=dec["images_per_s_per_core"],
                gpus_per_replica=gpr,
            ),
            "cpu_cores_per_gpu": _figure(
                decode_cores + m["cpus_per_replica"] / gpr,
                "cores",
                "decode_cores_per_gpu + cpus_per_replica / gpus_per_replica",
                decode_cores_per_gpu=decode_cores,
                cpus_per_replica=m["cpus_per_replica"],
                gpus_per_replica=gpr,
            ),
            "captions_bytes": _figure(
                units * m["caption_file_overhead_bytes"]
                + target / n * m["caption_rows"] * m["caption_bytes_per_row"],
                "bytes",
                "units * file_overhead_bytes + target_images / sample_images * sample_rows "
                "* bytes_per_row",
                units=units,
                file_overhead_bytes=m["caption_file_overhead_bytes"],
                target_images=target,
                sample_images=n,
                sample_rows=m["caption_rows"],
                bytes_per_row=m["caption_bytes_per_row"],
            ),
        }
        per_model[name] = p
        if m["cut_share"] > CUT_WARN_SHARE:
            warnings.append(
                f"{name}: {m['cut_at_max_tokens']} of {m['images']} captions "
                f"({100 * m['cut_share']:.0f}%) stopped at max_tokens ({m['max_tokens']}): they "
                "end mid-sentence; raise max_tokens (GPU time grows with it) or accept them"
            )
        if name not in given_rates and m["measured_on"] == "cpu":
            warnings.append(
                f"{name}: engine rate measured on CPU ({rate:.3g} images/s): a CPU rate does "
                "not predict a GPU rate, in either direction (a tiny model on a CPU can outrun "
                "a 7B model on a GPU), so GPU-hours, wall time, cost and CPU cores per GPU "
                "below hold only for this engine on this machine. Measure one unit on one GPU "
                "(`steady_images_per_s` in recaption_report.json) or assume a rate, and pass "
                f"--engine-rate {name}=IMG_PER_S"
            )
        if m["images"] < 64:
            warnings.append(
                f"{name}: only {m['images']} images were timed; rates and shares from so few "
                "are rough, and an engine batches better with more in flight: use --sample 200+"
            )
    total = sum(p["gpu_hours"]["value"] for p in per_model.values())
    need = {name: p["gpus_per_replica"] for name, p in per_model.items()}
    config_gpus = sum(mm[k]["replicas"] * need[k] for k in mm)
    g = gpus or (int(config_gpus) if float(config_gpus).is_integer() else config_gpus)
    if g < sum(need.values()):
        raise PlanError(
            f"--gpus {g}: one replica of every model needs {sum(need.values()):g} GPUs at "
            "once (models run side by side); pass more GPUs"
        )
    # The config's replicas say how the GPUs are shared between models; scaled to G GPUs.
    wall = {}
    for name, p in per_model.items():
        share = mm[name]["replicas"] * need[name] / config_gpus
        replicas = max(1, math.floor(g * share / need[name]))
        p["replicas_on_gpus"] = replicas
        p["wall_hours"] = _figure(
            p["gpu_hours"]["value"] / (replicas * need[name]),
            "hours",
            "gpu_hours / (replicas * gpus_per_replica)",
            gpu_hours=p["gpu_hours"]["value"],
            replicas=replicas,
            gpus_per_replica=need[name],
        )
        wall[name] = p["wall_hours"]["value"]
    slowest = max(wall, key=wall.get)
    predicted = {
        "models": per_model,
        "gpu_hours": _figure(
            total,
            "GPU-hours",
            "sum(gpu_hours)",
            gpu_hours={k: p["gpu_hours"]["value"] for k, p in per_model.items()},
        ),
        "gpus": g,
        "wall_hours": _figure(
            wall[slowest],
            "hours",
            "max(wall_hours)",
            wall_hours=wall,
        ),
        "wall_hours_balanced": _figure(
            total / g,
            "hours",
            "gpu_hours / gpus",
            gpu_hours=total,
            gpus=g,
        ),
        "balanced_gpus": {
            k: round(g * p["gpu_hours"]["value"] / total, 2) if total else None
            for k, p in per_model.items()
        },
        "cpu_cores_per_gpu": _figure(
            max(p["cpu_cores_per_gpu"]["value"] for p in per_model.values()),
            "cores",
            "max(cpu_cores_per_gpu)",
            cpu_cores_per_gpu={k: p["cpu_cores_per_gpu"]["value"] for k, p in per_model.items()},
        ),
    }
    ds = measured["dataset"]
    storage = {
        "input_bytes": _figure(
            target * inp["bytes_per_image"],
            "bytes",
            "target_images * bytes_per_image",
            target_images=target,
            bytes_per_image=inp["bytes_per_image"],
        ),
        "captions_bytes": _figure(
            sum(p["captions_bytes"]["value"] for p in per_model.values()),
            "bytes",
            "sum(captions_bytes)",
            captions_bytes={k: p["captions_bytes"]["value"] for k, p in per_model.items()},
        ),
        "dataset_bytes": _figure(
            target * ds["bytes_per_sample"],
            "bytes",
            "target_images * bytes_per_sample",
            target_images=target,
            bytes_per_sample=ds["bytes_per_sample"],
        ),
    }
    storage["total_bytes"] = _figure(
        sum(f["value"] for f in storage.values()),
        "bytes",
        "input_bytes + captions_bytes + dataset_bytes",
        **{k: f["value"] for k, f in storage.items()},
    )
    predicted["storage"] = storage
    predicted["cost"] = _figure(
        None if price is None else total * price,
        "in the price's currency",
        "gpu_hours * gpu_hour_price",
        gpu_hours=total,
        gpu_hour_price=price,
    )
    if wall and len(wall) > 1 and wall[slowest] > 1.25 * min(wall.values()):
        warnings.append(
            f"the models finish at different times (the job ends with {slowest}); set each "
            f"model's replicas in proportion to balanced_gpus to end together "
            f"(wall_hours_balanced)"
        )
    if measured["sample_images"] < 1000:
        warnings.append(
            "storage per caption and per dataset sample is measured on small files: Parquet "
            "compresses 10,000-row files better, so these sizes are upper bounds"
        )
    return predicted, warnings


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


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a person reads it: measured, then predicted with formulas, then warnings."""
    me, pr = plan["measured"], plan["predicted"]
    lines = [
        f"measured on {me['sample_images']} images of {plan['input']} "
        f"({me['input']['shards_read']} shards read: {me['input']['images']} images, "
        f"{_size(me['input']['bytes_per_image'])} per image)"
    ]
    for size, d in me["decode"].items():
        lines.append(
            f"  decode+resize to {size} px: {d['images_per_s_per_core']:.1f} images/s per core"
        )
    for name, m in me["models"].items():
        lines.append(
            f"  {name} ({m['family']}, {m['engine']}, on {m['measured_on']}): "
            f"load {m['load_seconds']:.1f}s, "
            f"{m['images_per_s']:.3g} images/s, {m['generated_tokens_per_image']:.1f} generated "
            f"tokens/image, cut at max_tokens {100 * m['cut_share']:.1f}%, "
            f"{m['caption_words_mean']:.1f} words / {m['caption_bert_tokens_mean']:.1f} BERT "
            f"tokens per caption, {_size(m['caption_bytes_per_row'])} per caption row"
        )
    lines.append(f"  dataset shard: {_size(me['dataset']['bytes_per_sample'])} per sample")
    lines.append(
        f"predicted for {plan['target_images']:,} images on {pr['gpus']} GPUs (formula = value):"
    )

    def row(label: str, f: dict[str, Any]) -> None:
        if f["value"] is None:
            value = "n/a (no --gpu-hour-price)"
        elif f["unit"] == "bytes":
            value = _size(f["value"])
        else:
            value = f"{f['value']:,.4g} {f['unit']}"
        lines.append(f"  {label}: {f['formula']} = {value}")

    for name, p in pr["models"].items():
        rate = p["engine_images_per_s"]
        lines.append(f"  {name}: {rate['value']:.4g} images/s per replica ({rate['source']})")
        row("    GPU-hours", p["gpu_hours"])
        row(f"    wall time, {p['replicas_on_gpus']} replica(s)", p["wall_hours"])
        row("    CPU cores per GPU", p["cpu_cores_per_gpu"])
        row("    captions", p["captions_bytes"])
    row("GPU-hours, all models", pr["gpu_hours"])
    row("wall time", pr["wall_hours"])
    row("wall time, GPUs split to balance", pr["wall_hours_balanced"])
    lines.append(f"    balanced split (GPUs per model): {pr['balanced_gpus']}")
    row("CPU cores per GPU", pr["cpu_cores_per_gpu"])
    for key, f in pr["storage"].items():
        row(key.replace("_bytes", " storage"), f)
    row("cost", pr["cost"])
    lines += [f"warning: {w}" for w in plan["warnings"]]
    return "\n".join(lines)


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
