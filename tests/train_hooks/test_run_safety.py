"""Hardening of the trainer (issue 10): planted checkpoints are refused by `longcap eval` and
`longcap train --resume` without running their code, a refused newest checkpoint falls back to
the previous one, a non-empty run folder is refused, a torn last log line is ignored, and
train.yaml with flags laid over it goes through the one config loader."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.cli import main as longcap
from pipeline.config_loader import ConfigError
from train_hooks.checkpoints import (
    UnsafeCheckpointError,
    list_checkpoints,
    load_checkpoint_file,
    rng_state,
    set_rng_state,
)


class _Planted:
    """Unpickling this runs code: it writes a marker file (what an attacker's payload does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def plant(path: Path, marker: Path) -> Path:
    """A file shaped like a checkpoint whose unpickling would run code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "model_config": {}, "payload": _Planted(marker)}, path)
    return path


def test_eval_refuses_a_planted_checkpoint(tmp_path, capsys):
    marker = tmp_path / "marker"
    bad = plant(tmp_path / "evil.pt", marker)
    rc = longcap(["eval", "--checkpoint", str(bad), "--shards", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(bad) in err and "refused" in err and "weights_only=True" in err
    assert not marker.exists(), "the planted code ran"
    # A run folder whose only checkpoint is planted: the same refusal.
    plant(tmp_path / "run" / "checkpoints" / "step_0000001.pt", marker)
    assert longcap(["eval", "--checkpoint", str(tmp_path / "run"), "--shards", "x"]) == 2
    assert "step_0000001.pt: refused" in capsys.readouterr().err
    assert not marker.exists()


def test_garbage_and_torn_files_are_refused_by_name(tmp_path):
    torn = tmp_path / "torn.pt"
    torn.write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(UnsafeCheckpointError, match="torn.pt: refused"):
        load_checkpoint_file(torn)
    other = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, other)
    with pytest.raises(UnsafeCheckpointError, match="not a longcap checkpoint"):
        load_checkpoint_file(other)


def test_rng_state_round_trips_through_weights_only(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    path = tmp_path / "rng.pt"
    torch.save({"rng": rng_state()}, path)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()  # move every generator on
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_resume_with_only_a_planted_checkpoint_is_refused(shards_dir, tmp_path, capsys):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    plant(run / "checkpoints" / "step_0000004.pt", marker)
    argv = ["train", "--shards", str(shards_dir), "--out", str(run), "--steps", "2"]
    rc = longcap([*argv, "--batch-size", "4", "--workers", "0", "--no-progress", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "no checkpoint loads safely" in err and "step_0000004.pt: refused" in err
    assert not marker.exists(), "the planted code ran"


def _train_argv(shards_dir: Path, run: Path, steps: int) -> list[str]:
    argv = ["train", "--shards", str(shards_dir), "--out", str(run), "--steps", str(steps)]
    argv += ["--batch-size", "4", "--context-length", "64", "--workers", "0", "--no-progress"]
    return [*argv, "--save-every", "1", "--warmup", "1"]


@pytest.mark.slow
def test_resume_falls_back_past_a_planted_newest_checkpoint_and_a_torn_log_line(
    shards_dir, tmp_path, capsys
):
    run, marker = tmp_path / "run", tmp_path / "marker"
    assert longcap(_train_argv(shards_dir, run, 2)) == 0
    names = [p.name for p in list_checkpoints(run)]
    assert names == ["step_0000001.pt", "step_0000002.pt"]
    plant(run / "checkpoints" / "step_0000002.pt", marker)  # the newest is replaced
    with (run / "log.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 1.2')  # killed mid-write: a torn last line
    capsys.readouterr()
    assert longcap([*_train_argv(shards_dir, run, 3), "--resume"]) == 0
    out, err = capsys.readouterr()
    assert not marker.exists(), "the planted code ran"
    assert "step_0000002.pt: refused" in err and "trying the previous checkpoint" in err
    assert "step_0000001.pt at step 1" in out
    assert "dropped unreadable line(s) [3]" in out
    steps = [json.loads(ln)["step"] for ln in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    ck = torch.load(run / "checkpoints" / "step_0000003.pt", weights_only=True)
    assert ck["step"] == 3 and isinstance(ck["rng"][0]["numpy"]["keys"], torch.Tensor)


def test_train_refuses_a_non_empty_run_folder(shards_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_0000009.pt").write_bytes(b"an earlier run's checkpoint")
    (run / "log.jsonl").write_text('{"step": 9}\n')
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    argv = ["train", "--shards", str(shards_dir), "--out", str(run), "--steps", "1"]
    assert longcap(argv) == 2
    err = capsys.readouterr().err
    assert str(run) in err and "--resume" in err and "--overwrite" in err
    assert longcap([*argv, "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    (run / "notes.txt").write_text("mine")  # not a run's file: even --overwrite keeps off
    assert longcap([*argv, "--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    # The refused runs took the folder's lock before looking (so that no second run can
    # --overwrite a live one's files); its lock file is all they leave.
    from shards.runlock import LOCK_NAME

    after = {
        p: p.read_bytes()
        for p in run.rglob("*")
        if p.is_file() and p.name not in ("notes.txt", LOCK_NAME)
    }
    assert after == before, "an earlier run's files changed"


@pytest.mark.slow
def test_overwrite_replaces_an_earlier_run(shards_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_0000009.pt").write_bytes(b"old")
    (run / ".lock").write_text("a lock file does not make a folder a run")
    assert longcap([*_train_argv(shards_dir, run, 1), "--overwrite"]) == 0
    assert "--overwrite: removed checkpoints" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(run)] == ["step_0000001.pt"]


def _parse_train(argv: list[str]) -> argparse.Namespace:
    from pipeline.cli import build_parser

    return build_parser().parse_args(["train", *argv])


def test_train_yaml_with_flag_overrides(tmp_path):
    from pipeline.cli_train import train_config_from_args
    from train_hooks.config import TrainConfig

    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "train.yaml"
    path.write_text(
        yaml.safe_dump(
            {"shards": "../data", "out": "runs/a", "steps": 50, "batch_size": 8, "lr": 1e-3}
        )
    )
    cfg = train_config_from_args(_parse_train(["--config", str(path), "--steps", "7"]))
    assert cfg.steps == 7  # the flag wins
    assert cfg.batch_size == 8 and cfg.lr == 1e-3  # the file's
    assert cfg.context_length == TrainConfig.context_length  # neither: the dataclass default
    assert cfg.shards == str(tmp_path / "cfg" / "../data")  # relative to the file
    assert cfg.out == str(tmp_path / "cfg" / "runs/a")
    # Flags alone, no file: defaults from the dataclass, not from argparse.
    cfg = train_config_from_args(_parse_train(["--shards", "s", "--out", "o"]))
    assert (cfg.steps, cfg.batch_size, cfg.progress) == (1000, 32, True)
    cfg = train_config_from_args(_parse_train(["--shards", "s", "--out", "o", "--no-progress"]))
    assert cfg.progress is False


@pytest.mark.parametrize(
    "data, expect",
    [
        ({"batch_size": "10"}, "batch_size: must be an integer, got '10'"),
        ({"steps": 0}, "steps: must be >= 1, got 0"),
        ({"batch_size": -4}, "batch_size: must be >= 1, got -4"),
        ({"mode": "one"}, "mode: must be one of"),
        ({"text_mode": "fil"}, "text_mode: must be one of"),
        ({"preset": "huge"}, "preset: must be one of ['base', 'tiny']"),
        ({"lr": "fast"}, "lr: must be a number, got 'fast'"),
        ({"models": "a,b"}, "models: must be a list of non-empty strings (or null), got 'a,b'"),
        ({"stepz": 3}, "unknown field(s) ['stepz']; known: ["),
        ({"subcaptions": 3}, "subcaptions: applies to text_mode k"),
        ({"dreamlip_off_by_one": True}, "applies to text_mode dreamlip only"),
    ],
)
def test_bad_train_yaml_names_file_and_field(tmp_path, capsys, data, expect):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"shards": "s", "out": str(tmp_path / "o"), **data}))
    assert longcap(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}" in err and expect in err, err
    assert not (tmp_path / "o").exists()


def test_missing_required_field_without_a_file(capsys):
    assert longcap(["train", "--out", "o"]) == 2
    assert "shards: is required" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="batch_size: must be an integer"):
        from train_hooks.config import load_train_config

        load_train_config(None, {"shards": "s", "out": "o", "batch_size": True})
