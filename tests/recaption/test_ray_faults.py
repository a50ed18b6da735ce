"""Ray faults in the recaption job (issue 10): a hung engine is killed at the unit deadline and
its unit retried, a unit that never finishes is reported failed, and the job ends with its
report and exit code 1. Real Ray (a head on 127.0.0.1), a stand-in engine (no vLLM)."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.recaption import UnitClock, failure_kind
from tests.recaption.conftest import make_input_shards


@pytest.mark.slow
def test_hung_units_are_killed_retried_and_reported(ray_head, tmp_path, capsys):
    import ray

    from pipeline.recaption import main

    make_input_shards(tmp_path / "in", shards=4)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlavaForConditionalGeneration"]}')
    cfg = {
        "input": str(tmp_path / "in"),
        "output": str(tmp_path / "out"),
        "ray_address": ray_head["address"],
        "progress": False,
        "unit_timeout_s": 3,
        "max_unit_retries": 1,
        "models": [
            {
                "name": "stub",
                "family": "llava-1.5",
                "path": str(model),
                "engine": "tests.recaption.stub_engine:HangingEngine",
                "engine_kwargs": {
                    "hang_shards": ["00001"],
                    "hang_once_shards": ["00002"],
                    "marker_dir": str(tmp_path),
                },
            }
        ],
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        rc = main(["--config", str(path)])
    finally:
        ray.shutdown()
    assert rc == 1, capsys.readouterr()
    report = json.loads((tmp_path / "out" / "recaption_report.json").read_text())
    stub = report["models"]["stub"]
    assert not report["complete"]
    # 00001 hung on both tries: failed, with the reason; 00002 hung once, then finished.
    assert [u["shard"] for u in stub["units_failed"]] == ["00001"]
    assert "timed out after 3s (unit_timeout_s)" in stub["units_failed"][0]["error"]
    assert stub["units_done"] == 3
    assert (tmp_path / "hung-00002").exists()
    done = sorted(p.stem for p in (tmp_path / "out" / "captions" / "stub").glob("*.parquet"))
    assert done == ["00000", "00002", "00003"]


def test_unit_clock_starts_a_unit_when_it_reaches_the_head_of_its_actor():
    clock = UnitClock(10.0)
    clock.submit("a", "actor1", now=0.0)
    clock.submit("b", "actor1", now=1.0)  # queued behind a: its clock has not started
    clock.submit("c", "actor2", now=15.0)
    assert clock.next_due(5.0) == 5.0
    assert clock.expired(10.0) == ["a"]
    clock.finish("a", "actor1", now=11.0)  # b starts now
    assert clock.expired(20.5) == []
    assert clock.expired(21.0) == ["b"]
    assert sorted(clock.drop_lane("actor1")) == ["b"]
    assert clock.expired(100.0) == ["c"]
    assert UnitClock(None).next_due(0.0) is None and UnitClock(None).expired(1e9) == []


def test_every_ray_error_is_a_retry_or_a_failed_unit():
    from ray import exceptions as rx

    assert failure_kind(rx.ActorDiedError()) == "actor"
    assert failure_kind(rx.ActorUnavailableError("restarting", b"0" * 16)) == "actor"
    assert failure_kind(rx.WorkerCrashedError()) == "infra"
    assert failure_kind(rx.OutOfMemoryError("killed by the memory monitor")) == "infra"
    assert failure_kind(rx.ObjectLostError("ab" * 20, None, "")) == "infra"
    assert failure_kind(rx.NodeDiedError("node gone")) == "infra"
    # The unit's own code raised (an unreadable shard): retrying would fail again.
    broken = rx.RayTaskError("decode_shard", "Traceback ...", ValueError("bad tar"))
    assert failure_kind(broken) == "unit"
    # A task that failed because a task it depended on was killed for memory: a retry.
    lost = rx.RayTaskError("caption_unit", "Traceback ...", rx.OutOfMemoryError("oom"))
    assert failure_kind(lost) == "infra"


@pytest.mark.slow
def test_a_crash_of_the_driver_loop_still_writes_the_report(ray_head, tmp_path):
    """Whatever ends the job, recaption_report.json says what was done and why it stopped."""
    import ray

    from pipeline.recaption import run
    from pipeline.recaption_config import load_config

    make_input_shards(tmp_path / "in", shards=2)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["LlavaForConditionalGeneration"]}')
    entry = {"name": "stub", "family": "llava-1.5", "path": str(model)}
    entry["engine"] = "tests.recaption.stub_engine:HangingEngine"
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "models": [entry]}
        )
    )
    cfg = load_config(path)
    cfg.ray_address, cfg.progress = ray_head["address"], False
    calls = []

    def source():  # a stage that feeds shards, then fails (a bug, a lost mount)
        calls.append(1)
        if len(calls) > 1:
            raise OSError("input mount lost")
        return ["00000"], True

    try:
        with pytest.raises(OSError, match="input mount lost"):
            run(cfg, source=source)
    finally:
        ray.shutdown()
    report = json.loads((tmp_path / "out" / "recaption_report.json").read_text())
    assert report["complete"] is False
    assert report["error"] == "OSError: input mount lost"
    assert "stub" in report["models"]
