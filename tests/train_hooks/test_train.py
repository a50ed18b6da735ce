"""Training runs (slow): the CLI on shards built by `longcap shards`, eval, resume, long
contexts, and DDP with two CPU processes on gloo."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cli_train import add_train_commands
from pipeline.config_loader import ConfigError
from train_hooks.checkpoints import latest_checkpoint
from train_hooks.train import TrainConfig, train

pytestmark = pytest.mark.slow


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="longcap")
    add_train_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "log.jsonl").read_text().splitlines()]


def small(shards, out, **kw) -> TrainConfig:
    base = dict(
        shards=str(shards),
        out=str(out),
        context_length=64,
        subcaptions=2,
        steps=4,
        batch_size=8,
        num_workers=0,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_cli_train_then_eval(shards_dir, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--shards", str(shards_dir), "--out", str(run), "--preset", "tiny"]
    argv += ["--corner-tokens", "2", "--text-mode", "k", "--subcaptions", "3"]
    argv += ["--context-length", "77"]
    argv += ["--steps", "3", "--batch-size", "64", "--workers", "1", "--no-progress"]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert "longcap train:" in out and "using batch 40" in out  # 40 samples < batch 64
    assert "checkpoint:" in out and "log:" in out
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert {"loss", "lr", "temperature", "samples_per_s", "losses"} <= set(log[0])
    assert len(log[0]["losses"]) == 1 + 2 + 1  # short [CLS], long [CLS], 2 corners
    ck = latest_checkpoint(run)
    assert ck is not None and ck.name == "step_0000003.pt"

    for target in (run, ck):  # a run folder means its latest checkpoint; a file works too
        res = tmp_path / "res.json"
        argv = ["eval", "--checkpoint", str(target), "--shards", str(shards_dir)]
        argv += ["--json", str(res), "--zeroshot", str(shards_dir)]
        assert run_cli(argv) == 0
        out = capsys.readouterr().out
        assert "| long/i2t |" in out and "| short/t2i |" in out and "zero-shot" in out
        r = json.loads(res.read_text())
        assert r["images"] == 40 and r["long_texts"] == 80  # two models' captions
        for key in ("long/i2t_R@1", "long/t2i_R@5", "short/i2t_R@5", "zeroshot/top1"):
            assert 0.0 <= r[key] <= 100.0


def test_resume_gives_the_same_loss_curve(shards_dir, tmp_path):
    kw = dict(steps=6, num_workers=2, warmup=2, save_every=3)
    train(small(shards_dir, tmp_path / "full", **kw))
    # Interrupted: a run that stops after 3 steps (same schedule), then resumes.
    first = train(small(shards_dir, tmp_path / "part", stop_after=3, **kw))
    assert Path(first["checkpoint"]).name == "step_0000003.pt"
    ck = torch.load(first["checkpoint"], weights_only=True)
    assert {"model", "optimizer", "scheduler", "step", "rng", "data_position"} <= set(ck)
    train(small(shards_dir, tmp_path / "part", **kw), resume=True)
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert len(full) == len(resumed) == 6
    assert max(abs(a - b) for a, b in zip(full, resumed, strict=True)) <= 1e-6


@pytest.mark.parametrize("length,lock", [(192, None), (248, True)])
def test_long_contexts(shards_dir, tmp_path, length, lock):
    cfg = small(shards_dir, tmp_path / "run", context_length=length, steps=2, lock_image=lock)
    before = None
    if lock:
        from train_hooks.model import build_model, preset

        torch.manual_seed(cfg.seed)
        before = build_model(preset("tiny", lock_image=True)).vision.state_dict()
    res = train(cfg)
    assert res["steps"] == 2 and res["loss"] == res["loss"]  # not NaN
    if before is not None:
        after = res["model"].vision.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("mode", ["fill", "dreamlip", "k"])
def test_long_texts_and_short_texts_reach_the_loss(shards_dir, tmp_path, mode):
    run = tmp_path / mode
    argv = ["train", "--shards", str(shards_dir), "--out", str(run), "--text-mode", mode]
    argv += ["--long-texts", "2", "--mllm-short-texts", "1", "--window", "2"]
    argv += ["--context-length", "64", "--steps", "2", "--batch-size", "8", "--workers", "0"]
    argv += ["--no-progress", "--mode", "across_models"]
    assert run_cli(argv) == 0
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    # 2 short [CLS] (raw + one MLLM short text), then 2 long texts x ([CLS] + 2 corners).
    assert [len(r["losses"]) for r in log] == [2 + 2 * 3] * 2
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["text_mode"] == mode and saved["long_texts"] == 2


def test_short_captions_only(shards_dir, tmp_path):
    """--long-texts 0 --corner-tokens 0: the short-caption baseline; one text term in the loss,
    and long texts never read. With corner tokens it is refused (they only read long texts)."""
    run = tmp_path / "short"
    argv = ["train", "--shards", str(shards_dir), "--out", str(run), "--long-texts", "0"]
    argv += ["--corner-tokens", "0", "--context-length", "64", "--steps", "2"]
    argv += ["--batch-size", "8", "--workers", "0", "--no-progress"]
    assert run_cli(argv) == 0
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert [len(r["losses"]) for r in log] == [1, 1]
    with pytest.raises((ValueError, SystemExit), match="set --corner-tokens 0"):
        run_cli([*argv[:5], "--out", str(tmp_path / "k2"), "--long-texts", "0", "--steps", "1"])


def test_cli_rejects_flags_of_another_mode(shards_dir, tmp_path):
    base = ["train", "--shards", str(shards_dir), "--out", str(tmp_path / "r")]
    with pytest.raises(ConfigError, match="--subcaptions applies to --text-mode k"):
        run_cli([*base, "--subcaptions", "3"])
    with pytest.raises(ConfigError, match="needs --text-mode dreamlip"):
        run_cli([*base, "--dreamlip-off-by-one"])
    with pytest.raises(ValueError, match=r"has 4 values; this run has 7 text embeddings"):
        run_cli([*base, "--long-texts", "2", "--loss-weights", "1,1,1,1"])


def test_ddp_two_processes_on_gloo(shards_dir, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(worker), str(shards_dir), str(out)],
        env=env,
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = []
    for r in (0, 1):
        rows = [json.loads(ln) for ln in (out / f"keys_rank{r}.jsonl").read_text().splitlines()]
        assert len(rows) == 3
        seen.append({k for row in rows for k in row["keys"]})
    assert not seen[0] & seen[1]  # disjoint data
    w0 = torch.load(out / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(out / "weights_rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert len(losses(out)) == 3
