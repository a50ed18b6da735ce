"""`longcap` exit codes (README): 0 finished, 1 finished with failed units, 2 usage or config
error, 3 crash."""

from __future__ import annotations

from pipeline import cli_train
from pipeline.cli import main as longcap


def test_usage_errors_exit_2(capsys, tmp_path):
    assert longcap(["eval", "--checkpoint", str(tmp_path)]) == 2
    assert "give --shards DIR" in capsys.readouterr().err
    assert longcap(["eval", "--checkpoint", str(tmp_path / "none.pt"), "--shards", "s"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_a_crash_exits_3_with_its_traceback(monkeypatch, capsys):
    def crash(args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli_train, "_cmd_eval", crash)
    assert longcap(["eval", "--checkpoint", "x", "--shards", "y"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: disk on fire" in err and "exit 3" in err
