"""The recaption job with real parts: a Ray head on 127.0.0.1, vLLM's CPU engine, tiny models.

One reference run (two models at once) is shared: the resume and dead-actor tests compare their
outputs with it, row by row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.recaption.conftest import make_input_shards, write_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SHARDS = 4
ROWS = 7  # per shard: 6 images (+1 failed download in shard 00001)
COMPARED = ["key", "status", "prompt", "text", "finish_reason", "generated_tokens", "flags"]


def _units(out: Path, model: str) -> dict[str, list[dict]]:
    folder = out / "captions" / model
    return {
        p.stem: pq.read_table(p, columns=COMPARED).to_pylist()
        for p in sorted(folder.glob("*.parquet"))
    }


def _run_in_process(cfg_path: Path, address: str) -> dict:
    import ray

    from pipeline.recaption import run
    from pipeline.recaption_config import load_config

    cfg = load_config(cfg_path)
    cfg.ray_address = address
    cfg.progress = False
    try:
        return run(cfg)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("recaption")
    make_input_shards(root / "in", shards=SHARDS)
    models = {
        "llava": ("llava-1.5", tiny_models["llava-1.5"]),
        "qwen": ("qwen2-vl", tiny_models["qwen2-vl"]),
    }
    return {"root": root, "models": models}


@pytest.fixture(scope="module")
def reference(workdir, ray_head):
    root = workdir["root"]
    cfg = write_config(root / "ref.yaml", root / "in", root / "ref", workdir["models"])
    report = _run_in_process(cfg, ray_head["address"])
    return {"cfg": cfg, "out": root / "ref", "report": report}


def test_two_models_every_key_once_with_failures_recorded(reference):
    out, report = reference["out"], reference["report"]
    assert report["complete"]
    for model in ("llava", "qwen"):
        units = _units(out, model)
        assert sorted(units) == [f"{s:05d}" for s in range(SHARDS)]
        keys = [r["key"] for rows in units.values() for r in rows]
        assert len(keys) == len(set(keys)) == SHARDS * 6 + 1
        rows = {r["key"]: r for rows in units.values() for r in rows}
        assert rows["000019999"]["status"] == "failed_to_download"
        assert rows["000010002"]["status"] == "image_decode_error"
        ok = [r for r in rows.values() if r["status"] == "ok"]
        assert len(ok) == SHARDS * 6 - 1
        assert all(r["text"] and r["prompt"] and r["finish_reason"] for r in ok)
        # Prompt variety: both prompts were drawn.
        assert {r["prompt"] for r in ok} == {
            "Describe the image in detail.",
            "What is in this picture?",
        }
        m = report["models"][model]
        assert m["units_done"] == SHARDS and m["images"] == SHARDS * 6 + 1
        assert m["failures"] == {"failed_to_download": 1, "image_decode_error": 1}
        assert m["generated_tokens"] > 0 and m["images_per_s"] > 0
    saved = json.loads((out / "recaption_report.json").read_text())
    assert saved["models"].keys() == {"llava", "qwen"}


def test_rerun_skips_finished_units(reference, ray_head):
    out = reference["out"]
    before = {p: p.stat().st_mtime_ns for p in out.glob("captions/*/*.parquet")}
    report = _run_in_process(reference["cfg"], ray_head["address"])
    assert all(
        m["units_skipped"] == SHARDS and m["units_done"] == 0 for m in report["models"].values()
    )
    assert {p: p.stat().st_mtime_ns for p in out.glob("captions/*/*.parquet")} == before


def test_killed_driver_resumes_to_the_same_outputs(workdir, reference, ray_head):
    root = workdir["root"]
    llava = {"llava": workdir["models"]["llava"]}
    cfg = write_config(root / "kill.yaml", root / "in", root / "killed", llava, progress=False)
    env = {**ray_head["env"], "RAY_ADDRESS": ray_head["address"]}
    cmd = [sys.executable, "-m", "pipeline.recaption", "--config", str(cfg)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    units = root / "killed" / "captions" / "llava"
    deadline = time.time() + 240
    while not list(units.glob("*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-job, no cleanup
    proc.wait()
    done_before = len(list(units.glob("*.parquet")))
    assert 1 <= done_before < SHARDS, "the kill must land mid-job"
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((root / "killed" / "recaption_report.json").read_text())
    assert report["models"]["llava"]["units_skipped"] == done_before
    assert _units(root / "killed", "llava") == _units(reference["out"], "llava")


def test_actor_killed_mid_run_job_completes(workdir, reference, ray_head):
    import ray

    root = workdir["root"]
    llava = {"llava": workdir["models"]["llava"]}
    cfg = write_config(root / "dead.yaml", root / "in", root / "dead", llava)
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(_run_in_process(cfg, ray_head["address"]))
    )
    thread.start()
    units = root / "dead" / "captions" / "llava"
    deadline = time.time() + 240
    while not list(units.glob("*.parquet")) and time.time() < deadline:
        time.sleep(0.1)
    actor = ray.get_actor("longcap-llava-0", namespace="longcap")
    ray.kill(actor, no_restart=False)  # as a crash would: Ray restarts it
    killed_mid_run = thread.is_alive() and len(list(units.glob("*.parquet"))) < SHARDS
    thread.join(timeout=600)
    assert killed_mid_run, "the kill must land mid-job"
    assert result["complete"], result["models"]["llava"]["units_failed"]
    assert _units(root / "dead", "llava") == _units(reference["out"], "llava")


def test_ray_job_submit(workdir, ray_head):
    root = workdir["root"]
    cfg = write_config(
        root / "job.yaml", root / "in", root / "job", workdir["models"], progress=False
    )
    ray_bin = Path(sys.executable).parent / "ray"
    cmd = [
        str(ray_bin), "job", "submit", "--address", ray_head["dashboard"],
        "--working-dir", str(REPO), "--",
        sys.executable, "-m", "pipeline.recaption", "--config", str(cfg),
    ]  # fmt: skip
    r = subprocess.run(cmd, env=ray_head["env"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in r.stdout.lower()
    report = json.loads((root / "job" / "recaption_report.json").read_text())
    assert report["complete"]
    assert all(m["units_done"] == SHARDS for m in report["models"].values())


def test_bad_model_path_fails_its_units_clearly(workdir, ray_head, tmp_path):
    root = workdir["root"]
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    models = {"broken": ("llava-1.5", broken)}
    cfg = write_config(tmp_path / "bad.yaml", root / "in", tmp_path / "out", models)
    report = _run_in_process(cfg, ray_head["address"])
    failed = report["models"]["broken"]["units_failed"]
    assert not report["complete"] and len(failed) == SHARDS
    assert "engine failed to load" in failed[0]["error"]
    assert not list((tmp_path / "out").glob("captions/*/*.parquet"))


def test_local_executor_writes_the_reference_outputs(workdir, reference, tmp_path):
    """`executor: local` (no Ray: the engine in a thread of this process, chunks of 3 images)
    writes the same rows as the Ray reference run, with the same counts."""
    from pipeline.recaption import run
    from pipeline.recaption_config import load_config

    root = workdir["root"]
    llava = {"llava": workdir["models"]["llava"]}
    path = write_config(
        tmp_path / "local.yaml", root / "in", tmp_path / "local", llava, chunk_images=3
    )
    cfg = load_config(path)
    cfg.executor, cfg.progress = "local", False
    report = run(cfg)
    assert report["complete"]
    assert _units(tmp_path / "local", "llava") == _units(reference["out"], "llava")
    keys = ("units_done", "images", "captioned", "failures", "generated_tokens")
    ref = reference["report"]["models"]["llava"]
    assert {k: report["models"]["llava"][k] for k in keys} == {k: ref[k] for k in keys}
