"""The img2dataset child dies with its driver (issue 10, finding 11): a driver killed with
SIGKILL leaves no child or grandchild behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A driver that starts, through popen_tied, a child that starts a grandchild; it prints both
# pids, then waits to be killed.
_DRIVER = """
import sys, time
from pipeline.processes import popen_tied
child = popen_tied([sys.executable, "-c",
    "import subprocess, sys, time; p = subprocess.Popen(['sleep', '300']); "
    "print(p.pid, flush=True); time.sleep(300)"], stdout=sys.stdout)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_DEATHSIG is Linux's")
def test_killed_driver_takes_its_children_along():
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    grandchild = int(driver.stdout.readline())
    guard = [
        int(p) for p in Path(f"/proc/{driver.pid}/task/{driver.pid}/children").read_text().split()
    ]
    assert guard and _alive(grandchild)
    os.kill(driver.pid, signal.SIGKILL)  # no cleanup code of the driver runs
    driver.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in [grandchild, *guard]):
        time.sleep(0.2)
    assert not any(_alive(p) for p in [grandchild, *guard]), "a child outlived its driver"


def test_start_ingest_ties_img2dataset_to_the_driver(tmp_path, monkeypatch):
    """start_ingest goes through popen_tied (the guard), with img2dataset's own command."""
    from pipeline import ingest

    seen = {}

    def fake_popen(cmd, **kwargs):
        seen.update(cmd=cmd, **kwargs)
        return subprocess.Popen(["true"])

    monkeypatch.setattr(ingest, "popen_tied", fake_popen)
    ingest.start_ingest(ingest.IngestConfig(url_list="u.csv"), tmp_path, []).wait()
    # img2dataset runs with its fetch replaced by the URL policy's (pipeline.safe_download).
    assert seen["cmd"][:3] == [sys.executable, "-m", "pipeline.safe_download"]
    assert "--url_list" in seen["cmd"]
