"""The recaption stage's config: YAML in, validated dataclasses out, errors naming the field.

Every field but `input`, `output` and each model's `name`, `family` and `path` has a default,
and the defaults run on a machine without a GPU (`gpus_per_replica: 0` runs vLLM's CPU build).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PROMPTS = ["Describe the image in detail."]


class ConfigError(ValueError):
    """A config that cannot run; the message names the file and the field."""


@dataclass
class ModelConfig:
    name: str
    family: str
    path: str
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_tokens: int = 256
    temperature: float = 0.2
    top_p: float = 1.0
    seed: int = 0
    replicas: int = 1
    gpus_per_replica: float = 0.0  # 0: vLLM's CPU build; >= 1: tensor-parallel size
    cpus_per_replica: float = 1.0
    # Images per engine call. vLLM batches continuously inside a call; between calls the engine
    # drains, so a call should hold many times max_num_seqs images.
    batch_size: int = 1024
    image_size: int | None = None  # longer side before the engine; None: the family's
    max_model_len: int | None = None
    dtype: str = "bfloat16"
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecaptionConfig:
    input: str
    output: str
    models: list[ModelConfig]
    max_unit_retries: int = 2  # a unit whose actor died is retried this many times
    max_actor_restarts: int = 3
    decode_cpus: float = 1.0  # CPUs per image-decoding task
    prefetch_units: int = 2  # decoded shards kept ahead of each model's engines
    ray_address: str | None = None  # None: the job's cluster, or a new local one
    shards: list[str] | None = None  # only these input shard names (default: all)
    progress: bool = True


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}" if where else msg)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check one scalar or list field against its annotation (as a string, PEP 563)."""
    if typ in ("str",):
        if not isinstance(value, str) or not value.strip():
            raise _fail(where, f"must be a non-empty string, got {value!r}")
        return value
    if typ in ("int",):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, f"must be an integer, got {value!r}")
        return value
    if typ in ("float",):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(where, f"must be a number, got {value!r}")
        return float(value)
    if typ in ("bool",):
        if not isinstance(value, bool):
            raise _fail(where, f"must be true or false, got {value!r}")
        return value
    if typ.startswith("str | None") or typ.startswith("int | None"):
        return None if value is None else _coerce(value, typ.split(" |")[0], where)
    if typ.startswith("list[str]"):
        if value is None and "None" in typ:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise _fail(where, f"must be a list of non-empty strings, got {value!r}")
        return value
    if typ.startswith("dict"):
        if not isinstance(value, dict):
            raise _fail(where, f"must be a mapping, got {value!r}")
        return value
    return value


def build_dataclass(cls, data: Any, where: str, skip: tuple[str, ...] = ()):
    """`cls(**data)` after checking fields (unknown, missing, types); errors name `where.field`."""
    if not isinstance(data, dict):
        raise _fail(where, f"must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _fail(where, f"unknown field(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in data:
            if required:
                raise _fail(f"{where}.{name}" if where else name, "is required")
            continue
        if name in skip:
            kwargs[name] = data[name]
            continue
        kwargs[name] = _coerce(data[name], str(f.type), f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _validate_model(m: ModelConfig, where: str) -> None:
    from recaption.families import FAMILIES

    if m.family not in FAMILIES:
        raise _fail(f"{where}.family", f"unknown family {m.family!r}; one of {sorted(FAMILIES)}")
    checks = [
        ("max_tokens", m.max_tokens >= 1, "must be >= 1"),
        ("temperature", m.temperature >= 0, "must be >= 0"),
        ("top_p", 0 < m.top_p <= 1, "must be in (0, 1]"),
        ("replicas", m.replicas >= 1, "must be >= 1"),
        ("gpus_per_replica", m.gpus_per_replica >= 0, "must be >= 0"),
        (
            "gpus_per_replica",
            m.gpus_per_replica < 1 or float(m.gpus_per_replica).is_integer(),
            "above 1 must be a whole number (the tensor-parallel size)",
        ),
        ("cpus_per_replica", m.cpus_per_replica > 0, "must be > 0"),
        ("batch_size", m.batch_size >= 1, "must be >= 1"),
        ("prompts", len(m.prompts) >= 1, "must hold at least one prompt"),
        ("image_size", m.image_size is None or m.image_size >= 14, "must be >= 14 pixels"),
    ]
    for name, ok, msg in checks:
        if not ok:
            raise _fail(f"{where}.{name}", f"{msg}, got {getattr(m, name)!r}")


def parse_config(data: Any, source: str = "config") -> RecaptionConfig:
    """Validate a parsed YAML/JSON mapping; `source` names the file in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        cfg = build_dataclass(RecaptionConfig, data, "", skip=("models",))
        if not isinstance(cfg.models, list) or not cfg.models:
            raise _fail("models", "must be a non-empty list of models")
        models = []
        for i, m in enumerate(cfg.models):
            model = build_dataclass(ModelConfig, m, f"models[{i}]")
            _validate_model(model, f"models[{i}]")
            models.append(model)
        names = [m.name for m in models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise _fail("models", f"model names must be unique, repeated: {dup}")
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n)]
        if bad:
            raise _fail(
                "models", f"names are used as folder names: letters, digits, -_. only: {bad}"
            )
        cfg.models = models
        for name in ("max_unit_retries", "max_actor_restarts", "prefetch_units"):
            if getattr(cfg, name) < 0:
                raise _fail(name, "must be >= 0")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def _check_architecture(m: ModelConfig, folder: Path, where: str) -> None:
    """A family's prompt format only fits its own architecture: catch a mismatch before any
    engine loads (a LLaVA prompt sent to Qwen2-VL runs, and produces nonsense)."""
    import json

    from recaption.families import get_family

    try:
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return  # not a checkpoint folder we can read; vLLM will say what is wrong
    expected = get_family(m.family).architectures
    if archs and not set(archs) & set(expected):
        raise ConfigError(
            f"{where}.family: {m.family!r} expects {list(expected)}, but "
            f"{folder / 'config.json'} says {archs}"
        )


def load_config(path: str | Path) -> RecaptionConfig:
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    cfg = parse_config(data, str(p))
    # Relative paths in a config are relative to the config file, as a user reads them.
    base = p.resolve().parent
    cfg.input = str((base / Path(cfg.input).expanduser()).resolve())
    cfg.output = str((base / Path(cfg.output).expanduser()).resolve())
    resolve_model_paths(cfg.models, base, str(p))
    return cfg


def resolve_model_paths(models: list[ModelConfig], base: Path, source: str) -> None:
    """Make local model paths absolute (relative to the config's folder) and check them: a
    folder's architecture must fit the family, anything else must look like a hub id."""
    for i, m in enumerate(models):
        local = base / Path(m.path).expanduser()  # an absolute path stays as it is
        if local.exists():
            m.path = str(local.resolve())
            _check_architecture(m, local, f"{source}: models[{i}]")
        elif m.path.startswith((".", "/", "~")) or m.path.count("/") != 1:
            # Not a folder and not shaped like a hub id ("org/name"): a typo, say so now.
            raise ConfigError(
                f"{source}: models[{i}].path: {m.path!r} is neither a folder nor a hub id"
            )
