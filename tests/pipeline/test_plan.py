"""`longcap plan`: plan.json's shape, every formula redone from its inputs and from the measured
figures, scaling with --target-images and --gpus, the cut share, and bad inputs. The stub engine
(tests/pipeline/plan_stub_engine.py) makes the fast tests; one slow test runs vLLM's CPU build
with a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.plan_predict import predict
from tests.recaption.conftest import make_input_shards

STUB = "tests.pipeline.plan_stub_engine:CuttingEngine"
# make_input_shards: 3 shards x 6 images; shard 00001 also has a corrupt image (00001 0002,
# never reaches an engine) and a failed download (a row without an image).
CUT = ["000000000", "000000001", "000020003", "000010002"]  # the last one is the corrupt image
TARGET = 1_000_000


def _config(tmp_path: Path, input_dir: Path, **first) -> Path:
    models = [
        {
            "name": "a",
            "family": "llava-1.5",
            "path": "stub/a",
            "engine": STUB,
            "engine_kwargs": {"cut_keys": CUT, "words": 14},
            "max_tokens": 14,
            "replicas": 2,
            "gpus_per_replica": 1,
            "cpus_per_replica": 3,
            **first,
        },
        {"name": "b", "family": "qwen2-vl", "path": "stub/b", "engine": STUB},
    ]
    cfg = {"input": str(input_dir), "output": str(tmp_path / "out"), "models": models}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def stub_plan(tmp_path_factory):
    """One plan over every image of the test input (18), with a price, kept work folder."""
    tmp = tmp_path_factory.mktemp("plan")
    input_dir = make_input_shards(tmp / "in")
    config = _config(tmp, input_dir)
    out = tmp / "plan.json"
    argv = ["plan", "--config", str(config), "--sample", "18", "--target-images", str(TARGET)]
    argv += ["--gpu-hour-price", "2.5", "--out", str(out), "--keep-work", str(tmp / "work")]
    assert main(argv) == 0
    return json.loads(out.read_text()), input_dir, tmp / "work"


def _gpu_visible() -> bool:
    """Model "a" has gpus_per_replica 1: the plan calls it measured on a GPU where one is."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _evaluate(formula: str, inputs: dict) -> float:
    """A formula's value from its own inputs (a dict input stands for its values)."""
    env = {k: list(v.values()) if isinstance(v, dict) else v for k, v in inputs.items()}
    return eval(formula, {"__builtins__": {}, "sum": sum, "max": max}, env)


def _figures(node, where=""):
    """Every {value, unit, formula, inputs} figure in the predicted tree, with its path."""
    if isinstance(node, dict):
        if "formula" in node:
            yield where, node
        else:
            for k, v in node.items():
                yield from _figures(v, f"{where}.{k}")


def test_plan_json_shape(stub_plan):
    plan, _, _ = stub_plan
    assert plan["longcap_plan_version"] == 1
    assert plan["target_images"] == TARGET and plan["sample"] == 18
    me, pr = plan["measured"], plan["predicted"]
    assert set(me) == {"input", "sample_images", "decode", "models", "dataset"}
    assert set(me["decode"]) == {"336", "448"}  # one per image size (llava 336, qwen 448)
    for m in me["models"].values():
        for key in ("images_per_s", "generated_tokens_per_image", "cut_share", "load_seconds"):
            assert isinstance(m[key], float | int)
    assert me["models"]["a"]["measured_on"] == ("gpu" if _gpu_visible() else "cpu")
    assert me["models"]["b"]["measured_on"] == "cpu"  # gpus_per_replica 0
    assert set(pr["models"]) == {"a", "b"}
    for key in ("gpu_hours", "wall_hours", "wall_hours_balanced", "cpu_cores_per_gpu", "cost"):
        assert set(pr[key]) == {"value", "unit", "formula", "inputs"}
    assert set(pr["storage"]) == {"input_bytes", "captions_bytes", "dataset_bytes", "total_bytes"}


def test_every_formula_gives_its_value(stub_plan):
    plan, _, _ = stub_plan
    figures = list(_figures(plan["predicted"]))
    assert len(figures) >= 20
    for where, f in figures:
        assert _evaluate(f["formula"], f["inputs"]) == pytest.approx(f["value"]), where


def test_predictions_from_measured_figures(stub_plan):
    """Redo the plan's arithmetic from the measured part, independently of its formulas."""
    plan, input_dir, _ = stub_plan
    me, pr = plan["measured"], plan["predicted"]
    n = me["sample_images"]
    files = [f for f in input_dir.iterdir() if f.suffix in (".tar", ".parquet", ".json")]
    assert me["input"]["shard_bytes"] == sum(f.stat().st_size for f in files)
    assert (me["input"]["rows"], me["input"]["images"]) == (19, 18)
    hours = {}
    for name, m in me["models"].items():
        gpr = m["gpus_per_replica"] or 1
        dec = me["decode"][str(m["image_size"])]
        assert (dec["images"], dec["failures"]) == (17, 1)
        p = pr["models"][name]
        hours[name] = TARGET * 17 / n / m["images_per_s"] * gpr / 3600
        assert p["gpu_hours"]["value"] == pytest.approx(hours[name])
        cores = m["images_per_s"] / dec["images_per_s_per_core"] / gpr + m["cpus_per_replica"] / gpr
        assert p["cpu_cores_per_gpu"]["value"] == pytest.approx(cores)
    assert pr["gpu_hours"]["value"] == pytest.approx(sum(hours.values()))
    # Config: a has 2 replicas of 1 GPU, b 1 replica (0 in the config, planned as 1 GPU).
    assert pr["gpus"] == 3
    assert pr["models"]["a"]["replicas_on_gpus"] == 2
    assert pr["wall_hours"]["value"] == pytest.approx(max(hours["a"] / 2, hours["b"]))
    assert pr["cost"]["value"] == pytest.approx(sum(hours.values()) * 2.5)
    storage = pr["storage"]
    assert storage["input_bytes"]["value"] == pytest.approx(
        TARGET * me["input"]["shard_bytes"] / 18
    )
    assert storage["dataset_bytes"]["value"] == pytest.approx(
        TARGET * me["dataset"]["bytes_per_sample"]
    )
    parts = ("input_bytes", "captions_bytes", "dataset_bytes")
    assert storage["total_bytes"]["value"] == pytest.approx(sum(storage[k]["value"] for k in parts))


def test_measured_counts_match_the_captions(stub_plan):
    """Cut share, tokens, words and bytes as the kept unit files and dataset shard say."""
    import pyarrow.parquet as pq

    from recaption.clean import clean_caption
    from shards.tokens import count_tokens

    plan, _, work = stub_plan
    a, b = plan["measured"]["models"]["a"], plan["measured"]["models"]["b"]
    # Three cut keys reached the engine; the corrupt image never did.
    assert (a["cut_at_max_tokens"], a["images"]) == (3, 17)
    assert a["cut_share"] == pytest.approx(3 / 17)
    assert b["cut_at_max_tokens"] == 0
    rows = pq.read_table(work / "recaption" / "captions" / "a" / "00000.parquet").to_pylist()
    assert sum(r["finish_reason"] == "length" for r in rows) == 3
    assert a["caption_rows"] == len(rows) == 18
    text = clean_caption(rows[0]["raw_text"], "stop").text
    assert a["caption_words_mean"] == len(text.split())
    assert a["caption_bert_tokens_mean"] == count_tokens([text])[0]
    assert a["generated_tokens_per_image"] == 14 and b["generated_tokens_per_image"] == 12
    assert plan["measured"]["dataset"]["samples"] == 18
    shard = work / "shards" / "00000.parquet"
    assert shard.exists() and plan["measured"]["dataset"]["bytes"] >= shard.stat().st_size
    warnings = "\n".join(plan["warnings"])
    assert "a: 3 of 17 captions (18%) stopped at max_tokens (14)" in warnings
    assert "b: engine rate measured on CPU" in warnings
    # gpus_per_replica 1: a CPU rate only where no GPU is visible.
    assert ("a: engine rate measured on CPU" in warnings) is not _gpu_visible()


def test_scaling_with_target_and_gpus(stub_plan):
    plan, _, _ = stub_plan
    me = plan["measured"]
    base, _ = predict(me, TARGET, None, 1.0, {})
    double, _ = predict(me, 2 * TARGET, None, 1.0, {})
    assert double["gpu_hours"]["value"] == pytest.approx(2 * base["gpu_hours"]["value"])
    assert double["cost"]["value"] == pytest.approx(2 * base["cost"]["value"])
    assert double["storage"]["input_bytes"]["value"] == pytest.approx(
        2 * base["storage"]["input_bytes"]["value"]
    )
    # 3 GPUs in the config (a: 2, b: 1); 30 GPUs keep that split, 10x the replicas.
    big, _ = predict(me, TARGET, 30, 1.0, {})
    assert big["gpus"] == 30
    assert big["models"]["a"]["replicas_on_gpus"] == 20
    assert big["models"]["b"]["replicas_on_gpus"] == 10
    assert big["wall_hours"]["value"] == pytest.approx(base["wall_hours"]["value"] / 10)
    assert big["gpu_hours"]["value"] == pytest.approx(base["gpu_hours"]["value"])
    assert big["wall_hours_balanced"]["value"] == pytest.approx(base["gpu_hours"]["value"] / 30)
    shares = big["balanced_gpus"]
    assert sum(shares.values()) == pytest.approx(30, abs=0.02)


def test_given_engine_rate_replaces_the_measured_one(stub_plan):
    plan, _, _ = stub_plan
    me = plan["measured"]
    pr, warnings = predict(me, TARGET, None, None, {"a": 20.0})
    a = pr["models"]["a"]
    assert a["engine_images_per_s"] == {"value": 20.0, "source": "given (--engine-rate)"}
    assert a["gpu_hours"]["value"] == pytest.approx(TARGET * 17 / 18 / 20 / 3600)
    assert pr["cost"]["value"] is None
    assert not any(w.startswith("a: engine rate measured on CPU") for w in warnings)
    assert any(w.startswith("b: engine rate measured on CPU") for w in warnings)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(["plan", *argv])
    return rc, capsys.readouterr().err


def test_sample_stops_reading_once_full(tmp_path):
    """Eight shards, N = 8: two images from each of the first four shards in the seeded
    order, and no shard read past those four."""
    from pipeline.plan import draw_sample
    from pipeline.recaption_config import load_config

    input_dir = make_input_shards(tmp_path / "in", shards=8, per_shard=5)
    cfg = load_config(_config(tmp_path, input_dir))
    sample = draw_sample(cfg, 8, seed=3)
    assert len(sample.shards) == 4 and sample.rows == 4 * 5 + ("00001" in sample.shards)
    shards = sorted(s.key[:5] for s in sample.samples)
    assert shards == sorted(sample.shards * 2)
    assert draw_sample(cfg, 8, seed=3).shards == sample.shards  # the seed decides
    # Uneven shards: what one cannot give comes from another one already read.
    from tests.shards.helpers import jpeg_bytes, write_i2d_shard

    uneven = tmp_path / "uneven"
    for name, count in (("00000", 1), ("00001", 5)):
        rows = [
            {"key": f"{name}{i:04d}", "url": "http://127.0.0.1/x", "caption": "x",
             "jpg": jpeg_bytes(color=(9, 9, 9), size=(16, 16))}
            for i in range(count)
        ]  # fmt: skip
        write_i2d_shard(uneven, name, rows, [])
    cfg = load_config(_config(tmp_path, uneven))
    for seed in range(3):
        keys = sorted(s.key for s in draw_sample(cfg, 4, seed=seed).samples)
        assert keys == ["000000000", "000010000", "000010001", "000010002"]


def test_bad_inputs(tmp_path, capsys):
    input_dir = make_input_shards(tmp_path / "in")
    config = _config(tmp_path, input_dir)
    common = ["--target-images", "100", "--out", str(tmp_path / "p.json")]

    rc, err = _run(["--config", str(config), "--sample", "19", *common], capsys)
    assert rc == 2 and "--sample 19" in err and "holds only 18 images" in err

    rc, err = _run(["--config", str(tmp_path / "nope.yaml"), "--sample", "2", *common], capsys)
    assert rc == 2 and "nope.yaml" in err

    bad = _config(tmp_path, input_dir, max_tokens=0)
    rc, err = _run(["--config", str(bad), "--sample", "2", *common], capsys)
    assert rc == 2 and "run.yaml" in err and "models[0].max_tokens" in err

    config = _config(tmp_path, input_dir)
    for flags, words in (
        (["--engine-rate", "zz=3"], "no model 'zz'"),
        (["--engine-rate", "a=fast"], "NAME=IMAGES_PER_SECOND"),
        (["--gpus", "1"], "--gpus 1"),
        (["--sample", "0"], "--sample 0"),
    ):
        argv = ["--config", str(config), "--sample", "2", *common, *flags]
        rc, err = _run(argv, capsys)
        assert rc == 2 and words in err, (flags, err)
    assert not (tmp_path / "p.json").exists()

    # Shards with no image in them (every download failed), and a folder without shards.
    from tests.shards.helpers import write_i2d_shard

    empty = tmp_path / "empty"
    failed = [{"key": "000000001", "url": "http://127.0.0.1/x", "status": "failed_to_download",
               "error": "HTTP Error 404"}]  # fmt: skip
    write_i2d_shard(empty, "00000", [], failed)
    rc, err = _run(["--config", str(_config(tmp_path, empty)), "--sample", "1", *common], capsys)
    assert rc == 2 and "hold no images" in err and str(empty) in err
    broken = tmp_path / "broken"
    bad_jpegs = [
        {"key": f"00000000{i}", "url": "http://127.0.0.1/x", "caption": "x", "jpg": b"no jpeg"}
        for i in range(2)
    ]
    write_i2d_shard(broken, "00000", bad_jpegs, [])
    rc, err = _run(["--config", str(_config(tmp_path, broken)), "--sample", "2", *common], capsys)
    assert rc == 2 and "none of the 2 sampled images" in err and "decodes" in err
    only = _config(tmp_path, input_dir)
    data = yaml.safe_load(only.read_text())
    only.write_text(yaml.safe_dump({**data, "shards": ["00009"]}))
    rc, err = _run(["--config", str(only), "--sample", "2", *common], capsys)
    assert rc == 2 and "shards: none of ['00009']" in err
    (tmp_path / "none").mkdir()
    none = _config(tmp_path, tmp_path / "none")
    rc, err = _run(["--config", str(none), "--sample", "1", *common], capsys)
    assert rc == 2 and "no .tar or .parquet shards" in err and "input" in err


def test_build_config_uses_its_input_and_assemble_options(tmp_path):
    """A build.yaml plans from OUTPUT/ingest/shards with its `assemble` formats."""

    make_input_shards(tmp_path / "build" / "ingest" / "shards")
    (tmp_path / "urls.csv").write_text("url\nhttp://127.0.0.1/x.jpg\n")
    cfg = {
        "output": str(tmp_path / "build"),
        "ingest": {"url_list": str(tmp_path / "urls.csv")},
        "models": [{"name": "a", "family": "llava-1.5", "path": "stub/a", "engine": STUB}],
        "assemble": {"formats": ["parquet"]},
    }
    (tmp_path / "build.yaml").write_text(yaml.safe_dump(cfg))
    out, work = tmp_path / "plan.json", tmp_path / "work"
    argv = ["plan", "--config", str(tmp_path / "build.yaml"), "--sample", "6"]
    argv += ["--keep-work", str(work)]
    assert main([*argv, "--target-images", "10", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["input"] == str((tmp_path / "build" / "ingest" / "shards").resolve())
    assert plan["measured"]["dataset"]["formats"] == ["parquet"]
    # The sample is spread over the shards: 6 images, 2 from each of the 3.
    assert plan["measured"]["input"]["shards_read"] == 3
    import pyarrow.parquet as pq

    keys = pq.read_table(work / "input" / "00000.parquet").column("key").to_pylist()
    assert sorted(k[:5] for k in keys) == ["00000"] * 2 + ["00001"] * 2 + ["00002"] * 2


@pytest.mark.slow
def test_plan_with_a_tiny_vllm_model(tmp_path, tiny_models):
    """The real engine (vLLM's CPU build) on 12 images: counts agree with the unit it wrote."""
    import pyarrow.parquet as pq

    input_dir = make_input_shards(tmp_path / "in", shards=2, per_shard=6)
    cfg = {
        "input": str(input_dir),
        "output": str(tmp_path / "out"),
        "models": [
            {
                "name": "tiny-llava",
                "family": "llava-1.5",
                "path": str(tiny_models["llava-1.5"]),
                "max_tokens": 16,
                "batch_size": 8,
            }
        ],
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out, work = tmp_path / "plan.json", tmp_path / "work"
    argv = ["plan", "--config", str(tmp_path / "run.yaml"), "--sample", "12"]
    argv += ["--target-images", "100000", "--out", str(out), "--keep-work", str(work)]
    assert main(argv) == 0
    plan = json.loads(out.read_text())
    m = plan["measured"]["models"]["tiny-llava"]
    rows = pq.read_table(work / "recaption" / "captions" / "tiny-llava" / "00000.parquet")
    rows = [r for r in rows.to_pylist() if r["finish_reason"] is not None]
    assert m["images"] == len(rows) == 11  # 12 drawn, the corrupt one fails to decode
    assert m["cut_at_max_tokens"] == sum(r["finish_reason"] == "length" for r in rows)
    assert m["generated_tokens"] == sum(r["generated_tokens"] for r in rows)
    assert 0 < m["generated_tokens_per_image"] <= 16
    assert m["load_seconds"] > 0 and m["images_per_s"] > 0
    gpu_hours = plan["predicted"]["gpu_hours"]
    assert _evaluate(gpu_hours["formula"], gpu_hours["inputs"]) == pytest.approx(gpu_hours["value"])
    assert math.isclose(
        gpu_hours["value"], 100000 * 11 / 12 / m["images_per_s"] / 3600, rel_tol=1e-9
    )
    assert any("engine rate measured on CPU" in w for w in plan["warnings"])


def test_replan_from_an_earlier_measurement(stub_plan, tmp_path, capsys):
    """--measured predicts again (another target, cluster, rates) without running engines."""
    plan, _, _ = stub_plan
    first = tmp_path / "first.json"
    first.write_text(json.dumps(plan))
    out = tmp_path / "again.json"
    argv = ["plan", "--measured", str(first), "--target-images", str(2 * TARGET)]
    argv += ["--gpus", "30", "--engine-rate", "b=50", "--out", str(out)]
    assert main(argv) == 0
    again = json.loads(out.read_text())
    assert again["measured"] == plan["measured"]
    expected, _ = predict(plan["measured"], 2 * TARGET, 30, None, {"b": 50.0})
    assert again["predicted"] == expected
    assert again["predicted"]["models"]["b"]["engine_images_per_s"]["value"] == 50.0

    rc, err = _run(["--measured", str(first), "--config", "x.yaml", "--target-images", "5"], capsys)
    assert rc == 2 and "drop --config" in err
    (tmp_path / "junk.json").write_text("{}")
    rc, err = _run(["--measured", str(tmp_path / "junk.json"), "--target-images", "5"], capsys)
    assert rc == 2 and "not a plan.json" in err
    rc, err = _run(["--target-images", "5"], capsys)
    assert rc == 2 and "pass --config and --sample" in err
