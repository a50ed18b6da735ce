"""The README's cluster commands, run as written from a copy of the checkout against a Ray head
on 127.0.0.2 (tests/conftest.py `ray_head`, dashboard on 127.0.0.1), as a newcomer runs them:
after `make setup`, with `.venv` not activated (no .venv/bin on PATH, no VIRTUAL_ENV).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.pipeline.stub_build import stub_model

REPO = Path(__file__).resolve().parents[2]


def readme_commands(word: str) -> list[str]:
    """The shell lines of README.md's code blocks that run `longcap submit`, comments dropped,
    for the stage `word` (recaption, build)."""
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(".venv/bin/longcap submit") and f" -- {word} " in line:
                lines.append(line)
    return lines


def test_readme_submit_lines_parse():
    """Every `longcap submit` line of the README is a valid command line, naming a valid
    longcap command after `--`."""
    from pipeline.cli import build_parser

    lines = readme_commands("recaption") + readme_commands("build")
    assert len(lines) == 2, lines
    parser = build_parser()
    for line in lines:
        argv = shlex.split(line)[1:]
        args = parser.parse_args(argv)
        assert args.command == "submit" and args.address == "http://HEAD:8265"
        job = args.job[1:] if args.job[:1] == ["--"] else args.job
        assert parser.parse_args(job).command in ("recaption", "build")


def _copy_checkout(dest: Path) -> Path:
    """The checkout's files as a fresh clone has them (tracked and not ignored), with `.venv`
    linked to the environment `make setup` made."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    (dest / ".venv").symlink_to((REPO / ".venv").resolve())
    return dest


@pytest.mark.slow
def test_readme_submit_recaption_runs_as_written(ray_head, tmp_path):
    from tests.recaption.conftest import make_input_shards

    (line,) = readme_commands("recaption")
    clone = _copy_checkout(tmp_path / "clone")
    inp = make_input_shards(tmp_path / "in", shards=2, per_shard=4)
    out = tmp_path / "out"
    (clone / "run.yaml").write_text(
        yaml.safe_dump(
            {"input": str(inp), "output": str(out), "models": [stub_model()], "progress": False}
        )
    )
    venv_bin = str(REPO / ".venv" / "bin")
    env = {k: v for k, v in ray_head["env"].items() if k not in ("VIRTUAL_ENV", "RAY_ADDRESS")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != Path(venv_bin)
    )
    # The shared test environment's editable install points at the main checkout; in a fresh
    # clone it points at the clone itself, which this says here.
    env["PYTHONPATH"] = str(clone)
    command = line.replace("http://HEAD:8265", ray_head["dashboard"])
    r = subprocess.run(
        ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in r.stdout.lower(), r.stdout[-3000:]
    report = json.loads((out / "recaption_report.json").read_text())
    assert report["complete"] is True
    for s in range(2):
        keys = pq.read_table(out / "captions" / "stub" / f"{s:05d}.parquet").column("key")
        want = pq.read_table(inp / f"{s:05d}.parquet").column("key")
        assert sorted(keys.to_pylist()) == sorted(want.to_pylist())


def test_submit_command_names_the_interpreter_and_the_working_dir():
    import sys

    from pipeline.submit import submit_command

    cmd = submit_command(["recaption", "--config", "run.yaml"], "http://h:8265", no_wait=True)
    assert cmd[0] == str(Path(sys.executable).parent / "ray") and cmd[1:3] == ["job", "submit"]
    env = json.loads(cmd[cmd.index("--runtime-env-json") + 1])
    assert env == {"working_dir": ".", "excludes": [".venv", ".git"]}
    assert "--no-wait" in cmd
    sep = cmd.index("--")
    job = [sys.executable, "-m", "pipeline.cli", "recaption", "--config", "run.yaml"]
    assert cmd[sep + 1 :] == job


def test_submit_without_an_address_or_a_command_is_a_usage_error(monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["submit", "--", "recaption", "--config", "run.yaml"]) == 2
    assert "--address" in capsys.readouterr().err
    assert main(["submit", "--address", "http://h:8265"]) == 2
    assert "name the longcap command" in capsys.readouterr().err
