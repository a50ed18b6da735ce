"""qwen2.5-vl, blip-2 and internvl tiny models end to end: one recaption job (a Ray head on
127.0.0.2, vLLM's CPU engine) with all three, every key once, failures recorded.

One config holds the three models, so their engines load side by side in one run."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.recaption.conftest import make_input_shards, write_config

pytestmark = pytest.mark.slow
SHARDS = 2
MODELS = {"qwen25": "qwen2.5-vl", "blip2": "blip-2", "internvl": "internvl"}


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models, ray_head):
    import ray

    from pipeline.recaption import run
    from pipeline.recaption_config import load_config

    root = tmp_path_factory.mktemp("families")
    made = tiny_models  # the session's `longcap tiny-models` folder, one model per family
    make_input_shards(root / "in", shards=SHARDS, per_shard=3)
    models = {name: (family, made[family]) for name, family in MODELS.items()}
    cfg = load_config(write_config(root / "run.yaml", root / "in", root / "out", models))
    cfg.ray_address = ray_head["address"]
    cfg.progress = False
    try:
        report = run(cfg)
    finally:
        ray.shutdown()
    return root / "out", report, made


def test_each_family_captions_every_key_once(job):
    out, report, _ = job
    assert report["complete"]
    for name in MODELS:
        tables = sorted((out / "captions" / name).glob("*.parquet"))
        assert [p.stem for p in tables] == [f"{s:05d}" for s in range(SHARDS)]
        rows = [r for p in tables for r in pq.read_table(p).to_pylist()]
        keys = [r["key"] for r in rows]
        assert len(keys) == len(set(keys)) == SHARDS * 3 + 1  # + shard 1's failed download
        by_key = {r["key"]: r for r in rows}
        assert by_key["000019999"]["status"] == "failed_to_download"
        assert by_key["000010002"]["status"] == "image_decode_error"
        engine_rows = [
            r for r in rows if r["status"] not in ("failed_to_download", "image_decode_error")
        ]
        assert len(engine_rows) == SHARDS * 3 - 1
        for r in engine_rows:
            assert r["status"] in ("ok", "empty_output"), r
            assert r["model"] == name and r["prompt"] and r["generated_tokens"] >= 0
        assert any(r["status"] == "ok" for r in engine_rows), f"{name} captioned nothing"
        m = report["models"][name]
        assert m["units_done"] == SHARDS and m["images"] == SHARDS * 3 + 1
    saved = json.loads((out / "recaption_report.json").read_text())
    assert saved["models"].keys() == set(MODELS)


def test_tiny_checkpoints_render_their_prompts_as_the_real_ones(job):
    from types import SimpleNamespace

    from recaption.prompts import prompt_renderer

    _, _, made = job
    expected = {
        "qwen2.5-vl": ("checkpoint", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>"),
        "internvl": ("checkpoint", "<|im_start|>user\n<IMG_CONTEXT>\nHi<|im_end|>"),
        "blip-2": ("family", "Question: Hi Answer:"),
    }
    for family, (source, text) in expected.items():
        cfg = SimpleNamespace(family=family, path=str(made[family]), trust_remote_code=False)
        render = prompt_renderer(cfg)
        assert render.source == source and text in render("Hi")
