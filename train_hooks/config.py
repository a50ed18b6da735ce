"""`TrainConfig`: everything `longcap train` takes, read from train.yaml and/or flags, validated.

Light on purpose (no torch): the CLI builds its flags from this dataclass (`longcap train --help`
shows these defaults, written once, here) before any training code loads. Files go through the
project's one config loader (pipeline/config_loader.py): a field of the wrong type, an unknown
field or a value out of range stops the run with the file, the field and the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config_loader import ConfigError, load_dataclass, read_yaml_mapping
from shards.storage import is_uri
from train_hooks.sampling import ACROSS_MODELS, DREAMLIP, FILL, K_WINDOWS, MODES, TEXT_MODES

SHARD_FORMATS = ("auto", "tar", "parquet")
# Fields naming files or folders: relative paths in train.yaml are relative to the file.
PATH_FIELDS = ("shards", "out", "text_weights", "vision_weights", "vocab")


@dataclass
class TrainConfig:
    """Everything `longcap train` takes; saved in the run folder and in every checkpoint."""

    shards: str
    out: str
    preset: str = "tiny"
    corner_tokens: int = 2  # K
    text_mode: str = FILL  # fill | dreamlip | k (train_hooks/sampling.py)
    subcaptions: int = 4  # k (k mode only)
    window: int = 1  # m
    mode: str = ACROSS_MODELS  # across_models (fills the context) | one_model
    long_texts: int = 1  # T long texts per image, each [CLS] + K corners in the loss; 0: none
    mllm_short_texts: int = 0  # extra short texts per image from the MLLMs' short captions
    dreamlip_off_by_one: bool = False  # dreamlip mode: DreamLIP's start range, for comparisons
    models: list[str] | None = None  # only these models' long captions (default: all)
    context_length: int = 192
    steps: int = 1000
    batch_size: int = 32  # per process
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int | None = None  # default: 10% of steps, at most 1000
    grad_clip: float = 1.0
    lock_image: bool | None = None  # None: the preset's default
    loss_weights: list[float] | None = None
    seed: int = 0
    num_workers: int = 2
    shuffle_buffer: int = 1000
    shard_format: str = "auto"
    text_weights: str | None = None
    vision_weights: str | None = None
    vocab: str | None = None
    save_every: int | None = None  # default: only at the end
    keep_checkpoints: int = 3
    device: str = "auto"
    progress: bool = True
    stop_after: int | None = None  # stop (with a checkpoint) at this step, schedule unchanged
    log_keys: bool = False  # write keys_rank{R}.jsonl: which samples each rank trained on


def validate_train_config(cfg: TrainConfig, where: str = "train config") -> None:
    """Range and consistency checks of a TrainConfig (types are the loader's job); ConfigError
    naming `where`, the field and the value."""
    from train_hooks.model import PRESETS  # torch: only when a run is about to start

    def check(name: str, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: {name}: {what}, got {getattr(cfg, name)!r}")

    check("preset", cfg.preset in PRESETS, f"must be one of {sorted(PRESETS)}")
    check("text_mode", cfg.text_mode in TEXT_MODES, f"must be one of {list(TEXT_MODES)}")
    check("mode", cfg.mode in MODES, f"must be one of {list(MODES)}")
    check("shard_format", cfg.shard_format in SHARD_FORMATS, f"must be one of {SHARD_FORMATS}")
    for name in ("steps", "batch_size", "subcaptions", "window", "keep_checkpoints"):
        check(name, getattr(cfg, name) >= 1, "must be >= 1")
    check("long_texts", cfg.long_texts >= 0, "must be >= 0 (0: short captions only)")
    check(
        "corner_tokens",
        cfg.long_texts > 0 or cfg.corner_tokens == 0,
        "long_texts 0 trains on short captions only, and corner tokens only ever read long "
        "texts: set --corner-tokens 0",
    )
    for name in ("corner_tokens", "mllm_short_texts", "num_workers", "shuffle_buffer"):
        check(name, getattr(cfg, name) >= 0, "must be >= 0")
    for name in ("save_every", "stop_after"):
        check(name, getattr(cfg, name) is None or getattr(cfg, name) >= 1, "must be >= 1 or null")
    check("warmup", cfg.warmup is None or cfg.warmup >= 0, "must be >= 0 or null")
    check("context_length", cfg.context_length >= 2 + cfg.corner_tokens,
          f"must hold [CLS], {cfg.corner_tokens} corner tokens and one word")  # fmt: skip
    check("lr", cfg.lr > 0, "must be > 0")
    check("weight_decay", cfg.weight_decay >= 0, "must be >= 0")
    check("grad_clip", cfg.grad_clip >= 0, "must be >= 0 (0: no clipping)")
    check(
        "loss_weights",
        cfg.loss_weights is None or all(w >= 0 for w in cfg.loss_weights),
        "must be weights >= 0",
    )
    check(
        "dreamlip_off_by_one",
        not cfg.dreamlip_off_by_one or cfg.text_mode == DREAMLIP,
        "applies to text_mode dreamlip only (--dreamlip-off-by-one needs --text-mode dreamlip)",
    )
    check("device", cfg.device == "auto" or cfg.device.split(":")[0] in ("cpu", "cuda"),
          "must be auto, cpu, cuda or cuda:N")  # fmt: skip


def train_config_from(data: dict[str, Any], where: str) -> TrainConfig:
    """A validated TrainConfig from a mapping (train.yaml's, with flags laid over it)."""
    if "subcaptions" in data and data.get("text_mode", FILL) != K_WINDOWS:
        raise ConfigError(
            f"{where}: subcaptions: applies to text_mode k (--subcaptions applies to --text-mode "
            f"k); text_mode {data.get('text_mode', FILL)} decides how many sub-captions a text "
            "holds: drop subcaptions or set text_mode k"
        )
    cfg = load_dataclass(TrainConfig, data, where)
    validate_train_config(cfg, where)
    return cfg


def load_train_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """train.yaml (or nothing) with `overrides` (the flags given) laid over it, validated.
    Relative paths in the file are relative to the file, as a user reads them."""
    data: dict[str, Any] = {}
    where = "longcap train"
    if path is not None:
        p = Path(path)
        where = str(p)
        data = read_yaml_mapping(p)
        base = p.resolve().parent
        for name in PATH_FIELDS:
            value = data.get(name)
            # A URI (s3://...) is absolute; only local paths are taken relative to the file.
            if isinstance(value, str) and not is_uri(value):
                data[name] = str(base / Path(value).expanduser())
    data.update(overrides)
    if path is not None and overrides:
        where = f"{where} (with flags)"
    return train_config_from(data, where)
