"""The recaption scheduler apart from its executor (issue 12): the local executor (threads, no
Ray) runs the same jobs as the Ray one, to the same files; images move in chunks, so what is
decoded at once does not grow with shard size; deadlines and retries work without Ray too.
Stand-in engine (tests/recaption/stub_engine.py), no vLLM."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from tests.recaption.conftest import make_input_shards

REPO = Path(__file__).resolve().parents[2]
STUB = "tests.recaption.stub_engine:HangingEngine"


def _model_folder(root: Path) -> Path:
    model = root / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"architectures": ["LlavaForConditionalGeneration"]}')
    return model


def _config(tmp_path: Path, inp: Path, out: str, models: list[dict], **extra) -> Path:
    model = _model_folder(tmp_path)
    entries = [
        {"family": "llava-1.5", "path": str(model), "engine": STUB, "batch_size": 3, **m}
        for m in models
    ]
    cfg = {"input": str(inp), "output": str(tmp_path / out), "progress": False}
    cfg.update(models=entries, **extra)
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(path: Path, **overrides) -> dict:
    from pipeline.recaption import run
    from pipeline.recaption_config import load_config

    cfg = load_config(path)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return run(cfg)


def _tables(out: Path) -> dict[str, tuple]:
    """Every unit file: its rows and its schema metadata (fingerprint, made_from)."""
    return {
        str(p.relative_to(out)): (pq.read_table(p).to_pylist(), pq.read_schema(p).metadata)
        for p in sorted(out.glob("captions/*/*.parquet"))
    }


def _counts(report: dict) -> dict:
    keys = ("units_done", "units_skipped", "images", "captioned", "failures", "generated_tokens")
    return {
        name: {k: m[k] for k in keys} | {"failed": [u["shard"] for u in m["units_failed"]]}
        for name, m in report["models"].items()
    }


TWO_MODELS = [{"name": "a"}, {"name": "b", "batch_size": 5, "replicas": 2}]


def test_chunk_size_changes_nothing_in_the_output(tmp_path):
    """One chunk per image, or one per shard: the same rows in the same files, every key once
    (engine batches are cut by batch_size, not by chunks)."""
    inp = make_input_shards(tmp_path / "in", shards=3, per_shard=11)
    small = _run(_config(tmp_path, inp, "small", TWO_MODELS, executor="local", chunk_images=1))
    big = _run(_config(tmp_path, inp, "big", TWO_MODELS, executor="local", chunk_images=1000))
    assert small["complete"] and big["complete"]
    assert _tables(tmp_path / "small") == _tables(tmp_path / "big")
    assert _counts(small) == _counts(big)
    rows = [r for rows, _ in _tables(tmp_path / "small").values() for r in rows]
    assert len(rows) == 2 * (3 * 11 + 1)  # two models; shard 00001 has a failed download
    for model in ("a", "b"):
        keys = [r["key"] for r in rows if r["model"] == model]
        assert len(keys) == len(set(keys)) == 34
    assert _counts(small)["a"]["failures"] == {"failed_to_download": 1, "image_decode_error": 1}


def test_local_executor_imports_no_ray(tmp_path):
    """`longcap recaption --executor local` runs (and resumes) without importing Ray at all."""
    inp = make_input_shards(tmp_path / "in", shards=2)
    cfg = _config(tmp_path, inp, "out", [{"name": "a"}])
    code = (
        "import sys; from pipeline.cli import main; "
        f"rc = main(['recaption', '--config', {str(cfg)!r}, '--executor', 'local']); "
        "print('RAY', 'ray' in sys.modules); sys.exit(rc)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RAY False" in r.stdout
    report = json.loads((tmp_path / "out" / "recaption_report.json").read_text())
    assert report["complete"] and report["models"]["a"]["units_done"] == 2
    again = _run(cfg, executor="local")
    assert again["models"]["a"]["units_skipped"] == 2 and again["models"]["a"]["units_done"] == 0


def _decoded_images_alive(monkeypatch, tmp_path, per_shard: int) -> tuple[int, dict]:
    """Run a job on the local executor with an engine slower than decoding; return the most
    decoded images alive at once (counted when each image is decoded) and the report."""
    from recaption import units

    alive: dict[int, bool] = {}
    peak = [0]
    ids = itertools.count()
    real = units.decode_image

    class Tracked(np.ndarray):
        pass

    def counted(data, max_side):
        image = real(data, max_side).view(Tracked)  # an engine's copy is a plain array
        key = next(ids)
        alive[key] = True
        weakref.finalize(image, alive.pop, key, None)
        peak[0] = max(peak[0], len(alive))
        return image

    monkeypatch.setattr(units, "decode_image", counted)
    root = tmp_path / f"n{per_shard}"
    inp = make_input_shards(root / "in", shards=3, per_shard=per_shard)
    model = {"name": "a", "batch_size": 4, "engine_kwargs": {"delay_s": 0.02}}
    cfg = _config(root, inp, "out", [model], executor="local", chunk_images=4)
    cfg_overrides = {"prefetch_chunks": 2, "prefetch_units": 2}
    report = _run(cfg, **cfg_overrides)
    return peak[0], report


def test_decoded_images_alive_do_not_grow_with_shard_size(monkeypatch, tmp_path):
    """The bound is structural: per engine, `prefetch_chunks` chunks sent and not taken, one
    waiting in its stream, one being decoded, one just taken; per model, `prefetch_units`
    streams opened ahead, one waiting and one being decoded each. 9 chunks of 4 images here,
    for shards of 8 images and of 80 (a whole 80-image shard alone would be 80)."""
    bound = (2 + 1 + 1 + 1) * 4 + 2 * 2 * 4
    small, r_small = _decoded_images_alive(monkeypatch, tmp_path, per_shard=8)
    big, r_big = _decoded_images_alive(monkeypatch, tmp_path, per_shard=80)
    assert r_small["complete"] and r_big["complete"]
    assert r_big["models"]["a"]["images"] == 3 * 80 + 1
    assert 0 < small <= bound
    assert 0 < big <= bound < 80


def test_local_executor_kills_hung_units_retries_and_reports(tmp_path, capsys):
    """test_ray_faults' hung engine, without Ray: the hung thread is abandoned, a new engine
    loads, the unit is retried; one that hangs every time is reported failed."""
    from pipeline.recaption import main

    inp = make_input_shards(tmp_path / "in", shards=4)
    kwargs = {"hang_shards": ["00001"], "hang_once_shards": ["00002"]}
    kwargs["marker_dir"] = str(tmp_path)
    cfg = _config(
        tmp_path,
        inp,
        "out",
        [{"name": "stub", "engine_kwargs": kwargs}],
        executor="local",
        unit_timeout_s=1,
        max_unit_retries=1,
        max_actor_restarts=5,
    )
    assert main(["--config", str(cfg)]) == 1, capsys.readouterr()
    report = json.loads((tmp_path / "out" / "recaption_report.json").read_text())
    stub = report["models"]["stub"]
    assert [u["shard"] for u in stub["units_failed"]] == ["00001"]
    assert "timed out after 1s (unit_timeout_s)" in stub["units_failed"][0]["error"]
    assert stub["units_done"] == 3
    done = sorted(p.stem for p in (tmp_path / "out" / "captions" / "stub").glob("*.parquet"))
    assert done == ["00000", "00002", "00003"]


def test_an_engine_error_fails_its_unit_once_and_the_job_goes_on(tmp_path):
    inp = make_input_shards(tmp_path / "in", shards=3)
    model = {"name": "a", "engine_kwargs": {"fail_shards": ["00002"]}}
    report = _run(_config(tmp_path, inp, "out", [model], executor="local", chunk_images=2))
    a = report["models"]["a"]
    assert [u["shard"] for u in a["units_failed"]] == ["00002"]  # not retried: it would fail
    assert "cannot caption shard 00002" in a["units_failed"][0]["error"]
    assert a["units_done"] == 2 and not report["complete"]
    assert not (tmp_path / "out" / "captions" / "a" / "00002.parquet").exists()


def test_worker_refuses_chunks_out_of_order(tmp_path):
    from pipeline.recaption_config import ModelConfig
    from recaption.actor import EngineWorker, UnitStateLost
    from recaption.units import DecodedChunk, UnitSpec

    m = ModelConfig(name="a", family="llava-1.5", path=str(tmp_path), engine=STUB)
    worker = EngineWorker(m)
    with pytest.raises(UnitStateLost, match="chunk 1 came"):
        worker.caption_chunk(UnitSpec("00000"), DecodedChunk("00000", index=1))
    worker.caption_chunk(UnitSpec("00000"), DecodedChunk("00000", index=0))
    with pytest.raises(UnitStateLost):  # another try of the unit must start at chunk 0
        worker.caption_chunk(UnitSpec("00000", 1), DecodedChunk("00000", index=1))
    with pytest.raises(UnitStateLost):
        worker.finish_unit(UnitSpec("00000"), str(tmp_path / "out"))


def test_executor_and_chunk_fields_are_checked(tmp_path):
    from pipeline.recaption_config import ConfigError, parse_config

    base = {"input": "in", "output": "out", "models": [{"name": "a", "family": "llava-1.5"}]}
    base["models"][0]["path"] = "org/model"
    assert parse_config(base).executor == "ray" and parse_config(base).chunk_images == 100
    with pytest.raises(ConfigError, match=r"executor: must be one of \['ray', 'local'\]"):
        parse_config({**base, "executor": "dask"})
    for field in ("chunk_images", "prefetch_chunks"):
        with pytest.raises(ConfigError, match=f"{field}: must be >= 1"):
            parse_config({**base, field: 0})


@pytest.mark.slow
def test_local_and_ray_executors_write_identical_outputs(ray_head, tmp_path):
    """Same config, both executors: the same unit files (rows and fingerprints) and the same
    report counts; under Ray the chunks cross the object store."""
    import ray

    inp = make_input_shards(tmp_path / "in", shards=3, per_shard=9)
    local = _run(_config(tmp_path, inp, "local", TWO_MODELS, chunk_images=4, executor="local"))
    try:
        on_ray = _run(
            _config(tmp_path, inp, "ray", TWO_MODELS, chunk_images=4),
            ray_address=ray_head["address"],
        )
    finally:
        ray.shutdown()
    assert local["complete"] and on_ray["complete"]
    assert _counts(local) == _counts(on_ray)
    assert _tables(tmp_path / "local") == _tables(tmp_path / "ray")
    assert len(_tables(tmp_path / "ray")) == 6


def test_local_executor_refuses_two_vllm_engines(tmp_path):
    """Two vLLM engines in one process abort it (vLLM's CPU attention): refused before any
    engine loads, naming the way out."""
    from pipeline.executor_local import LocalExecutor
    from pipeline.recaption_config import ConfigError, parse_config

    models = [{"name": "a", "family": "llava-1.5", "path": "org/a", "replicas": 2}]
    job = parse_config({"input": "in", "output": "out", "executor": "local", "models": models})
    with pytest.raises(ConfigError, match=r"at most one vLLM engine.*a x2.*executor: ray"):
        LocalExecutor(job).start()
    models[0]["replicas"] = 1
    LocalExecutor(parse_config({"input": "in", "output": "out", "models": models})).start()
