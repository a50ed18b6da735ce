"""The recaption stage's config: YAML in, validated dataclasses out, errors naming the field.

Every field but `input`, `output` and each model's `name`, `family` and `path` has a default,
and the defaults run on a machine without a GPU (`gpus_per_replica: 0` runs vLLM's CPU build).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The one loader (pipeline/config_loader.py); `build_dataclass` is its older name here.
from pipeline.config_loader import ConfigError, config_error, read_yaml_mapping
from pipeline.config_loader import load_dataclass as build_dataclass
from shards.storage import is_uri

DEFAULT_PROMPTS = ["Describe the image in detail."]
# What runs the recaption units (pipeline/scheduler.py drives either).
EXECUTORS = ("ray", "local")


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
    # Run Python code shipped in the model folder (some InternVL checkpoints need it). Off by
    # default: a downloaded model folder is a stranger's code (docs/SECURITY.md).
    trust_remote_code: bool = False
    # One of recaption.engine.ENGINES ("vllm", "transformers", "openai"), or
    # "package.module:Class" for another engine with CaptionEngine's interface
    # (`Class(model_cfg)`, `.load_seconds`, `.generate(keys, images)`), e.g. a stand-in in tests.
    # None: the family's default (`Family.engines[0]`: vllm, transformers for instructblip).
    engine: str | None = None

    def __post_init__(self) -> None:
        if self.engine is None:
            from recaption.families import FAMILIES

            family = FAMILIES.get(self.family)  # an unknown family is _validate_model's error
            self.engine = family.engines[0] if family else "vllm"

    # engine openai only (recaption/engine_openai.py): the endpoint, e.g.
    # http://127.0.0.1:8000/v1 (requests go to {base_url}/chat/completions); the model name it
    # serves (None: `path`); the NAME of the environment variable holding the API key (None: no
    # key; never the key itself); requests in flight per engine; seconds one request may take;
    # retries of a request (408, 429, 5xx, connection errors), the first after retry_backoff_s,
    # doubling, or after the server's Retry-After when longer.
    base_url: str | None = None
    served_model: str | None = None
    api_key_env: str | None = None
    concurrency: int = 32
    request_timeout_s: float = 300.0
    request_retries: int = 4
    retry_backoff_s: float = 1.0


@dataclass
class RecaptionConfig:
    input: str
    output: str
    models: list[ModelConfig]
    max_unit_retries: int = 2  # a unit whose actor died is retried this many times
    max_actor_restarts: int = 3
    decode_cpus: float = 1.0  # CPUs per image-decoding task
    # Images move from decoding to engines in chunks of this many keys: what is decoded at once
    # is bounded by chunk counts, never by shard size (336 px: ~0.34 MB per image).
    chunk_images: int = 100
    prefetch_chunks: int = 2  # chunks sent to an engine and not yet taken, at most
    prefetch_units: int = 2  # next units of each model whose decoding starts ahead (1 chunk each)
    # "ray" (engines as Ray actors, a cluster or a local Ray) or "local" (threads in this
    # process, no Ray); the same scheduler and the same output files.
    executor: str = "ray"
    ray_address: str | None = None  # None: the job's cluster, or a new local one
    shards: list[str] | None = None  # only these input shard names (default: all)
    progress: bool = True
    # Seconds one unit may take on its actor, counted from when the actor is free for it (so
    # including the wait for its decoded images, usually ready ahead); past it the actor is
    # killed (Ray restarts it) and the unit retried, within max_unit_retries. null: no deadline.
    unit_timeout_s: float | None = 3600.0


def _validate_model(m: ModelConfig, where: str) -> None:
    from recaption.engine import ENGINES
    from recaption.families import FAMILIES

    if m.family not in FAMILIES:
        raise config_error(
            f"{where}.family", f"unknown family {m.family!r}; one of {sorted(FAMILIES)}"
        )
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
        (
            "engine_kwargs",
            "trust_remote_code" not in m.engine_kwargs,
            "must not set trust_remote_code: use the model's own `trust_remote_code: true`",
        ),
        (
            "engine",
            m.engine in ENGINES or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", m.engine),
            f"must be one of {sorted(ENGINES)} or package.module:Class",
        ),
    ]
    checks += _endpoint_checks(m)
    for name, ok, msg in checks:
        if not ok:
            raise config_error(f"{where}.{name}", f"{msg}, got {getattr(m, name)!r}")
    family = FAMILIES[m.family]
    if m.engine in ENGINES and m.engine not in family.engines:
        raise config_error(
            f"{where}.engine",
            f"family {m.family!r} does not run on the {m.engine!r} engine; set "
            f"`engine: {family.engines[0]}` (it runs on: {', '.join(family.engines)})",
        )
    if m.engine == "transformers" and m.gpus_per_replica > 1:
        raise config_error(
            f"{where}.gpus_per_replica",
            "the transformers engine runs a model on one GPU (or a share of one); for more "
            f"GPUs raise `replicas`, got {m.gpus_per_replica!r}",
        )


def _endpoint_checks(m: ModelConfig) -> list[tuple[str, bool, str]]:
    """The fields of engine openai: required and well-formed with it, absent without it."""
    if m.engine != "openai":
        builtin = m.engine in ("vllm", "transformers")
        return [
            (name, not builtin or getattr(m, name) is None, "is only read by `engine: openai`")
            for name in ("base_url", "served_model", "api_key_env")
        ]
    return [
        (
            "base_url",
            isinstance(m.base_url, str)
            and re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", m.base_url) is not None,
            "must be the endpoint's http:// or https:// URL, e.g. http://127.0.0.1:8000/v1",
        ),
        ("served_model", m.served_model is None or bool(m.served_model), "must not be empty"),
        (
            "api_key_env",
            m.api_key_env is None or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", m.api_key_env),
            "must be the NAME of an environment variable holding the key (never the key)",
        ),
        ("concurrency", m.concurrency >= 1, "must be >= 1"),
        ("request_timeout_s", m.request_timeout_s > 0, "must be > 0"),
        ("request_retries", m.request_retries >= 0, "must be >= 0"),
        ("retry_backoff_s", m.retry_backoff_s >= 0, "must be >= 0"),
    ]


def parse_config(data: Any, source: str = "config") -> RecaptionConfig:
    """Validate a parsed YAML/JSON mapping; `source` names the file in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        cfg = build_dataclass(RecaptionConfig, data, "", skip=("models",))
        if not isinstance(cfg.models, list) or not cfg.models:
            raise config_error("models", "must be a non-empty list of models")
        models = []
        for i, m in enumerate(cfg.models):
            model = build_dataclass(ModelConfig, m, f"models[{i}]")
            _validate_model(model, f"models[{i}]")
            models.append(model)
        names = [m.name for m in models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise config_error("models", f"model names must be unique, repeated: {dup}")
        bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", n)]
        if bad:
            raise config_error(
                "models", f"names are used as folder names: letters, digits, -_. only: {bad}"
            )
        cfg.models = models
        for name in ("max_unit_retries", "max_actor_restarts", "prefetch_units"):
            if getattr(cfg, name) < 0:
                raise config_error(name, "must be >= 0")
        for name in ("chunk_images", "prefetch_chunks"):
            if getattr(cfg, name) < 1:
                raise config_error(name, f"must be >= 1, got {getattr(cfg, name)!r}")
        if cfg.executor not in EXECUTORS:
            raise config_error(
                "executor", f"must be one of {list(EXECUTORS)}, got {cfg.executor!r}"
            )
        if cfg.unit_timeout_s is not None and cfg.unit_timeout_s <= 0:
            raise config_error("unit_timeout_s", f"must be > 0 or null, got {cfg.unit_timeout_s}")
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
    except (OSError, ValueError, AttributeError):
        check_remote_code(m, None, where)  # unknown architecture: assume it may run code
        return  # not a checkpoint folder we can read; vLLM will say what is wrong
    from recaption.convert_sharegpt4v import released_layout_error

    unconverted = released_layout_error(archs, m.path)
    if unconverted:
        raise ConfigError(f"{where}.path: {unconverted}")
    expected = get_family(m.family).architectures
    if archs and not set(archs) & set(expected):
        raise ConfigError(
            f"{where}.family: {m.family!r} expects {list(expected)}, but "
            f"{folder / 'config.json'} says {archs}"
        )
    check_remote_code(m, archs, where)


def check_remote_code(m: ModelConfig, archs: list[str] | None, where: str) -> None:
    """A model whose architecture runs code from its folder (InternVLChatModel) loads only when
    its config says `trust_remote_code: true`; `archs` None: unknown (a hub id), assume it may."""
    from recaption.families import get_family

    needs = get_family(m.family).remote_code_architectures
    hit = sorted(set(archs) & set(needs)) if archs else list(needs)
    if hit and not m.trust_remote_code:
        raise ConfigError(
            f"{where}.trust_remote_code: family {m.family!r} with architecture {hit[0]} runs "
            f"Python code shipped in the model folder {m.path}; read that code, then add "
            "`trust_remote_code: true` to this model, or use a checkpoint transformers supports "
            "natively (e.g. the InternVL '-hf' releases)"
        )


def load_config(path: str | Path) -> RecaptionConfig:
    """Read, check and resolve a recaption config file (run.yaml)."""
    p = Path(path)
    cfg = parse_config(read_yaml_mapping(p), str(p))
    # Relative paths in a config are relative to the config file, as a user reads them.
    base = p.resolve().parent
    for name in ("input", "output"):
        value = getattr(cfg, name)
        if not is_uri(value):  # s3://... is absolute; a local path is the file's
            setattr(cfg, name, str((base / Path(value).expanduser()).resolve()))
    resolve_model_paths(cfg.models, base, str(p))
    return cfg


def resolve_model_paths(models: list[ModelConfig], base: Path, source: str) -> None:
    """Make local model paths absolute (relative to the config's folder) and check them: a
    folder's architecture must fit the family, anything else must look like a hub id."""
    for i, m in enumerate(models):
        where = f"{source}: models[{i}]"
        if m.engine == "openai":
            continue  # `path` names the served model; the endpoint holds the checkpoint
        local = base / Path(m.path).expanduser()  # an absolute path stays as it is
        if local.exists():
            m.path = str(local.resolve())
            _check_architecture(m, local, where)
        elif m.path.startswith((".", "/", "~")) or m.path.count("/") != 1:
            # Not a folder and not shaped like a hub id ("org/name"): a typo, say so now.
            raise ConfigError(f"{where}.path: {m.path!r} is neither a folder nor a hub id")
        else:
            from recaption.convert_sharegpt4v import released_layout_error

            unconverted = released_layout_error(None, m.path)
            if unconverted:
                raise ConfigError(f"{where}.path: {unconverted}")
            check_remote_code(m, None, where)  # a hub id: its architecture is unknown here
