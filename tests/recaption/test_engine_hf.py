"""The transformers engine: unit rows, batching, determinism, finish reasons and token counts on
the tiny InstructBLIP (Vicuna and FlanT5) and LLaVA checkpoints; the instructblip family's
config rules; and whole `recaption` jobs through it on a real Ray cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config_loader import ConfigError
from recaption.engine import Generation, choose_prompt
from recaption.families import get_family

PROMPTS = ["Describe the image in detail.", "What is in this picture?", "Hi"]
# tiny model name -> family (the FlanT5 InstructBLIP is a variant of the instructblip family)
MODELS = {
    "instructblip": "instructblip",
    "instructblip-t5": "instructblip",
    "llava-1.5": "llava-1.5",
}
KEYS = [f"0000{i}000{i}" for i in range(5)]


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """The three tiny checkpoints, built here: they need transformers only, not vLLM."""
    pytest.importorskip("transformers")
    from toyworld.tiny_models import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("hf_models"), families=tuple(MODELS))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    # Varied sizes and colours: the processors resize them; the prompts vary in length.
    return [rng.integers(0, 256, (40 + 8 * i, 64, 3), dtype=np.uint8) for i in range(len(KEYS))]


def _cfg(hf_models, name: str, **over):
    from pipeline.recaption_config import ModelConfig

    kw = {"prompts": list(PROMPTS), "max_tokens": 8, "temperature": 0.0, "seed": 3, **over}
    return ModelConfig(name="m", family=MODELS[name], path=str(hf_models[name]), **kw)


def _engine(hf_models, name: str, **over):
    from recaption.engine_hf import TransformersEngine

    return TransformersEngine(_cfg(hf_models, name, **over))


@pytest.fixture(scope="module")
def engines(hf_models):
    """One greedy engine per tiny model, loaded once."""
    return {name: _engine(hf_models, name) for name in MODELS}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_row_per_key_in_order(engines, images, name):
    eng = engines[name]
    assert eng.load_seconds > 0
    gens = eng.generate(KEYS, images)
    assert [g.key for g in gens] == KEYS
    assert all(isinstance(g, Generation) for g in gens)
    for key, img, g in zip(KEYS, images, gens, strict=True):
        assert g.prompt == choose_prompt(PROMPTS, 3, key)
        assert isinstance(g.raw_text, str)
        assert g.finish_reason in ("stop", "length")
        assert 0 <= g.generated_tokens <= 8
        if g.finish_reason == "length":
            assert g.generated_tokens == 8
        # Prompt tokens: the key's own prompt with its image tokens, padding not counted.
        alone = eng.processor(images=[img], text=[eng.render_prompt(g.prompt)], return_tensors="pt")
        assert g.prompt_tokens == int(alone["attention_mask"].sum()) > 0
    assert eng.generate([], []) == []
    with pytest.raises(ValueError, match="2 keys for 1 images"):
        eng.generate(KEYS[:2], images[:1])


def test_instructblip_prompt_tokens_hold_the_query_tokens(engines, images):
    # The processor puts num_query_tokens image tokens before the plain instruction.
    for name in ("instructblip", "instructblip-t5"):
        eng = engines[name]
        g = eng.generate(KEYS[:1], images[:1])[0]
        text_tokens = len(eng.tokenizer(g.prompt)["input_ids"])
        assert g.prompt_tokens == eng.model.config.num_query_tokens + text_tokens


def test_padding_side_follows_the_language_model(engines):
    assert not engines["instructblip"].encoder_decoder
    assert engines["instructblip"].tokenizer.padding_side == "left"
    assert engines["instructblip-t5"].encoder_decoder
    assert engines["instructblip-t5"].tokenizer.padding_side == "right"
    assert engines["llava-1.5"].tokenizer.padding_side == "left"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_greedy_text_is_the_same_at_any_batch_size(engines, images, name):
    eng = engines[name]
    together = eng.generate(KEYS, images)
    assert len({g.prompt for g in together}) > 1  # prompts of several lengths: padding is used
    alone = [eng.generate([k], [im])[0] for k, im in zip(KEYS, images, strict=True)]
    split = eng.generate(KEYS[:2], images[:2]) + eng.generate(KEYS[2:], images[2:])
    assert alone == together
    assert split == together
    assert eng.generate(KEYS, images) == together  # and again: deterministic


@pytest.mark.parametrize("name", ["instructblip", "instructblip-t5"])
def test_sampling_is_reproducible_per_key(hf_models, images, name):
    eng = _engine(hf_models, name, temperature=1.0, top_p=0.95, max_tokens=6)
    first = eng.generate(KEYS, images)
    assert eng.generate(KEYS, images) == first  # the same batch: the same text
    # Each key has its own stream: its draws do not depend on its position in the batch.
    assert eng.generate(KEYS[::-1], images[::-1])[::-1] == first
    greedy = _engine(hf_models, name, max_tokens=6).generate(KEYS, images)
    assert [g.raw_text for g in first] != [g.raw_text for g in greedy]
    other_seed = _engine(hf_models, name, temperature=1.0, top_p=0.95, max_tokens=6, seed=4)
    assert [g.raw_text for g in other_seed.generate(KEYS, images)] != [g.raw_text for g in first]


def test_keyed_sampler_draws_each_row_from_its_own_stream():
    import torch

    from recaption.engine_hf import KeyedSampler

    scores = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    a = KeyedSampler([11, 22, 33], temperature=1.0, top_p=1.0)(None, scores)
    b = KeyedSampler([33, 22, 11], temperature=1.0, top_p=1.0)(None, scores.flip(0))
    # One finite score per row, and row i's pick follows its seed, not its position.
    assert (torch.isfinite(a).sum(-1) == 1).all()
    assert torch.equal(a.argmax(-1), b.argmax(-1).flip(0))
    # top_p that keeps only the most likely token is greedy.
    c = KeyedSampler([1, 2, 3], temperature=1.0, top_p=1e-6)(None, scores)
    assert torch.equal(c.argmax(-1), scores.argmax(-1))
    with pytest.raises(RuntimeError, match="num_beams"):
        KeyedSampler([1], 1.0, 1.0)(None, scores)


def test_forced_eos_stops_at_once_and_counts_nothing(hf_models, images):
    eng = _engine(hf_models, "instructblip")
    eos = eng.eos_ids[0]
    eng.generate_kwargs = {"sequence_bias": [[[eos], 100.0]]}  # eos first, for every row
    gens = eng.generate(KEYS, images)
    assert [(g.raw_text, g.finish_reason, g.generated_tokens) for g in gens] == [
        ("", "stop", 0)
    ] * 5


def test_fixed_length_output_reports_length(hf_models, images):
    # min_new_tokens == max_tokens (as the GPU check runs): eos is barred, every row runs out.
    eng = _engine(
        hf_models, "instructblip-t5", engine_kwargs={"generate_kwargs": {"min_new_tokens": 8}}
    )
    gens = eng.generate(KEYS, images)
    assert {(g.finish_reason, g.generated_tokens) for g in gens} == {("length", 8)}


def test_finish_cuts_at_eos_and_stop_strings(engines):
    eng = engines["llava-1.5"]  # the llava-1.5 family stops at "</s>" and "USER:"
    tok = eng.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    words = tok("A red ball on grass")["input_ids"]
    assert eng._finish(words + [eos, pad, pad]) == ("A red ball on grass", "stop", len(words))
    text = tok("A red ball USER: and more")["input_ids"]
    upto = next(n for n in range(1, len(text) + 1) if "USER:" in tok.decode(text[:n]))
    # generate pads a row after its stop string: the pads are not counted.
    assert eng._finish(text[:upto] + [pad] * 3) == ("A red ball ", "stop", upto)
    long = (words * 3)[:8]
    assert eng._finish(long) == (tok.decode(long), "length", 8)


def test_generate_kwargs_may_not_override_the_config(hf_models):
    for bad in ({"max_new_tokens": 3}, {"temperature": 0.5}, {"stop_strings": ["x"]}):
        with pytest.raises(ValueError, match="generate_kwargs sets"):
            _engine(hf_models, "instructblip", engine_kwargs={"generate_kwargs": bad})
    with pytest.raises(ValueError, match="num_beams > 1"):
        _engine(
            hf_models,
            "instructblip",
            temperature=0.7,
            engine_kwargs={"generate_kwargs": {"num_beams": 3}},
        )


def test_remote_code_checkpoint_is_refused_without_the_config_saying_so(tmp_path):
    import json

    from pipeline.recaption_config import ModelConfig
    from recaption.engine_hf import TransformersEngine

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["InternVLChatModel"]}))
    cfg = ModelConfig(name="ivl", family="internvl", path=str(tmp_path), engine="transformers")
    with pytest.raises(ValueError, match="trust_remote_code: true"):
        TransformersEngine(cfg)


def test_beam_search_runs_greedy_only(hf_models, images):
    eng = _engine(hf_models, "instructblip", engine_kwargs={"generate_kwargs": {"num_beams": 2}})
    gens = eng.generate(KEYS[:3], images[:3])
    assert [g.key for g in gens] == KEYS[:3]
    assert all(0 <= g.generated_tokens <= 8 for g in gens)


# --- the family and its config rules ---------------------------------------------------------


def test_instructblip_prompt_is_the_plain_instruction():
    fam = get_family("instructblip")
    assert fam.format_prompt("Describe the image in detail.") == "Describe the image in detail."
    assert fam.architectures == ("InstructBlipForConditionalGeneration",)
    assert fam.engines[0] == "transformers" and "vllm" not in fam.engines


def _model(**m):
    return {
        "name": "ib",
        "family": "instructblip",
        "path": "Salesforce/instructblip-vicuna-7b",
        **m,
    }


def test_config_refuses_vllm_for_instructblip():
    from pipeline.recaption_config import parse_config

    data = {"input": "in", "output": "out", "models": [_model(engine="vllm")]}
    with pytest.raises(ConfigError) as info:
        parse_config(data, "run.yaml")
    msg = str(info.value)
    assert "run.yaml" in msg and "models[0].engine" in msg
    assert "`engine: transformers`" in msg and "'instructblip'" in msg


def test_config_engine_defaults_to_the_familys_first():
    from pipeline.recaption_config import ModelConfig, parse_config

    data = {
        "input": "in",
        "output": "out",
        "models": [
            _model(),
            {"name": "llava", "family": "llava-1.5", "path": "llava-hf/llava-1.5-7b-hf"},
            _model(name="own", engine="tests.recaption.stub_engine:HangingEngine"),
        ],
    }
    cfg = parse_config(data)
    assert [m.engine for m in cfg.models] == [
        "transformers",
        "vllm",
        "tests.recaption.stub_engine:HangingEngine",
    ]
    assert ModelConfig(name="x", family="instructblip", path="p").engine == "transformers"
    assert ModelConfig(name="x", family="llava-1.5", path="p").engine == "vllm"


def test_config_refuses_transformers_on_several_gpus():
    from pipeline.recaption_config import parse_config

    data = {"input": "in", "output": "out", "models": [_model(gpus_per_replica=2)]}
    with pytest.raises(ConfigError, match=r"models\[0\].gpus_per_replica: .*replicas"):
        parse_config(data)
    parse_config({**data, "models": [_model(gpus_per_replica=1)]})


def test_tiny_checkpoints_pass_the_architecture_check(hf_models, tmp_path):
    import json

    from pipeline.recaption_config import load_config
    from tests.recaption.conftest import write_config

    models = {n.replace(".", ""): (MODELS[n], p) for n, p in hf_models.items()}
    cfg = load_config(write_config(tmp_path / "run.yaml", tmp_path / "in", tmp_path / "o", models))
    assert {m.name: m.engine for m in cfg.models} == {
        "instructblip": "transformers",
        "instructblip-t5": "transformers",
        "llava-15": "vllm",
    }
    marker = json.loads((hf_models["instructblip-t5"] / "longcap_tiny.json").read_text())
    assert marker["family"] == "instructblip"
    for name in ("instructblip", "instructblip-t5"):
        folder = Path(hf_models[name])
        assert (folder / "qformer_tokenizer").is_dir()  # the Q-Former's own tokenizer


# --- whole jobs on Ray -----------------------------------------------------------------------

SHARDS = 3


def _run(cfg_path: Path, address: str) -> dict:
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


@pytest.mark.slow
def test_recaption_job_on_the_transformers_engine(hf_models, ray_head, tmp_path):
    from recaption.clean import clean_caption
    from tests.recaption.conftest import make_input_shards, write_config

    make_input_shards(tmp_path / "in", shards=SHARDS)
    models = {
        "ib-vicuna": ("instructblip", hf_models["instructblip"]),
        "ib-t5": ("instructblip", hf_models["instructblip-t5"]),
        "llava": ("llava-1.5", hf_models["llava-1.5"]),
    }
    cfg = write_config(tmp_path / "run.yaml", tmp_path / "in", tmp_path / "out", models)
    data = yaml.safe_load(cfg.read_text())
    for m in data["models"]:
        m["engine"] = "transformers"  # the llava too (its default is vllm)
    cfg.write_text(yaml.safe_dump(data))
    report = _run(cfg, ray_head["address"])
    assert report["complete"]
    for model in models:
        rows = [
            r
            for p in sorted((tmp_path / "out" / "captions" / model).glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()
        ]
        keys = [r["key"] for r in rows]
        assert len(keys) == len(set(keys)) == SHARDS * 6 + 1  # every key once
        by_key = {r["key"]: r for r in rows}
        assert by_key["000019999"]["status"] == "failed_to_download"
        assert by_key["000010002"]["status"] == "image_decode_error"
        captioned = [r for r in rows if r["status"] in ("ok", "empty_output")]
        assert len(captioned) == SHARDS * 6 - 1
        for r in captioned:
            assert r["finish_reason"] in ("stop", "length") and r["model"] == model
            clean = clean_caption(r["raw_text"], r["finish_reason"])
            assert r["text"] == (clean.text if clean.status == "ok" else None)
            assert r["flags"] == list(clean.flags)
        assert any(r["status"] == "ok" for r in captioned), f"{model} captioned nothing"
        m = report["models"][model]
        assert m["units_done"] == SHARDS and m["images"] == SHARDS * 6 + 1
        assert m["generated_tokens"] == sum(r["generated_tokens"] for r in captioned) > 0
    # A rerun finds every unit done and writes nothing.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("captions/*/*.parquet")}
    again = _run(cfg, ray_head["address"])
    assert all(
        m["units_skipped"] == SHARDS and m["units_done"] == 0 for m in again["models"].values()
    )
    assert {p: p.stat().st_mtime_ns for p in before} == before
