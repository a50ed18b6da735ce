"""The arithmetic of `longcap plan`: from what was measured on a sample to the full run.

Pure functions of plain values (no engines, no files): `predict` turns the `measured` part of
plan.json into GPU-hours, wall time on G GPUs, CPU cores per GPU, storage and cost, each figure
as {value, unit, formula, inputs} so that the formula, evaluated on its inputs, gives the value;
`format_plan` prints a plan for a person. The measuring is in pipeline/plan.py.
"""

from __future__ import annotations

import math
from typing import Any

CUT_WARN_SHARE = 0.05  # warn when more captions than this stop at max_tokens


class PlanError(ValueError):
    """The plan cannot run; the message names the file, flag or field and what to do."""


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
    used = sum(p["replicas_on_gpus"] * need[k] for k, p in per_model.items())
    if used > g:
        warnings.append(
            f"{g:g} GPUs cannot keep the config's split with one replica of every model: the "
            f"replicas above need {used:g}; the wall time assumes they all run"
        )
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


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a person reads it: measured, then predicted with formulas, then warnings."""
    me, pr = plan["measured"], plan["predicted"]
    again = f" (read from {plan['measured_from']})" if "measured_from" in plan else ""
    lines = [
        f"measured{again} on {me['sample_images']} images of {plan['input']} "
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
