"""Prompt and seed derivation, the families' prompt formats, and one in-process engine run."""

from __future__ import annotations

import hashlib
from collections import Counter

import pyarrow.parquet as pq
import pytest

from recaption.engine import choose_prompt, key_seed
from recaption.families import FAMILIES, get_family

KEYS = [f"{i:09d}" for i in range(4000)]


def test_key_seed_is_a_fixed_function_of_seed_and_key():
    # Literal values: a change of hash, salt or byte order reseeds every caption of a rerun.
    assert key_seed(0, "000010000") == 977656315
    assert key_seed(7, "abc") == 438029699
    assert key_seed(0, "") == 12004672
    expected = (
        int.from_bytes(hashlib.blake2b(b"3:k", digest_size=8).digest(), "little") & 0x7FFFFFFF
    )
    assert key_seed(3, "k") == expected


def test_key_seed_same_input_same_output_and_31_bits():
    seeds = [key_seed(5, k) for k in KEYS]
    assert seeds == [key_seed(5, k) for k in KEYS]
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)
    assert len(set(seeds)) == len(KEYS)  # no collisions on a few thousand keys
    assert max(seeds) > 2**30  # the whole 31-bit range is used, not a narrow slice


def test_key_seed_depends_on_key_and_seed():
    assert key_seed(0, "a") != key_seed(0, "b")
    assert key_seed(0, "a") != key_seed(1, "a")
    assert key_seed(1, "2:x") != key_seed(12, "x")


def test_choose_prompt_is_deterministic_per_seed_and_key():
    prompts = ["p0", "p1", "p2", "p3"]
    first = [choose_prompt(prompts, 0, k) for k in KEYS[:200]]
    assert first == [choose_prompt(prompts, 0, k) for k in KEYS[:200]]
    # The choice depends on the key, not on the order of calls (a batch position).
    assert [choose_prompt(prompts, 0, k) for k in reversed(KEYS[:200])] == first[::-1]


def test_choose_prompt_uses_every_prompt_about_uniformly():
    prompts = ["p0", "p1", "p2", "p3"]
    counts = Counter(choose_prompt(prompts, 0, k) for k in KEYS)
    assert set(counts) == set(prompts)
    expected = len(KEYS) / len(prompts)
    for p in prompts:
        assert abs(counts[p] - expected) < 0.15 * expected, counts


def test_choose_prompt_depends_on_the_seed():
    prompts = ["p0", "p1", "p2", "p3"]
    a = [choose_prompt(prompts, 0, k) for k in KEYS[:1000]]
    b = [choose_prompt(prompts, 1, k) for k in KEYS[:1000]]
    differ = sum(x != y for x, y in zip(a, b, strict=True))
    assert 0.6 < differ / len(a) < 0.9  # independent draws differ 3 times in 4


def test_choose_prompt_single_prompt():
    assert {choose_prompt(["only"], s, k) for s in range(3) for k in KEYS[:50]} == {"only"}


PLACEHOLDERS = {
    "llava-1.5": "<image>",
    "qwen2-vl": "<|image_pad|>",
    "qwen2.5-vl": "<|image_pad|>",
    "internvl": "<image>",
    "sharegpt4v": "<image>",
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_formats_the_user_prompt(name):
    fam = get_family(name)
    assert fam is FAMILIES[name] and fam.name == name
    user = "Describe {this} image, in detail: 100% of it."
    text = fam.format_prompt(user)
    assert user in text
    assert "{prompt}" not in text
    assert text.count(user) == 1
    if name in PLACEHOLDERS:
        ph = PLACEHOLDERS[name]
        assert text.count(ph) == 1
        assert text.index(ph) < text.index(user)  # the image comes before the question
    assert fam.image_size >= 14
    assert fam.max_model_len > 0


def test_known_prompt_formats():
    # The family fallbacks (no chat template in the folder); tests/recaption/test_prompts.py
    # checks each against its official source. llava-1.5's carries the original LLaVA's Vicuna
    # system prompt and internvl's InternVL2.5's: official formats, see recaption/families.py.
    llava = get_family("llava-1.5").format_prompt("Hi")
    assert llava.startswith("A chat between a curious user and an artificial intelligence")
    assert llava.endswith(" USER: <image>\nHi ASSISTANT:")
    qwen = get_family("qwen2-vl").format_prompt("Hi")
    assert "<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>" in qwen
    assert qwen.endswith("<|im_start|>assistant\n")
    assert get_family("qwen2.5-vl").format_prompt("Hi") == qwen
    internvl = get_family("internvl").format_prompt("Hi")
    assert (
        internvl.startswith("<|im_start|>system\n") and "<|im_start|>user\n<image>\nHi" in internvl
    )
    assert get_family("blip-2").format_prompt("Hi") == "Question: Hi Answer:"


def test_every_family_placeholder_is_covered():
    # A new family with an image placeholder should be added to PLACEHOLDERS above.
    assert set(FAMILIES) - set(PLACEHOLDERS) == {"blip-2", "instructblip"}  # processor adds it


def test_get_family_unknown_lists_names():
    with pytest.raises(ValueError) as info:
        get_family("llava-9")
    msg = str(info.value)
    assert "'llava-9'" in msg
    for name in FAMILIES:
        assert repr(name) in msg


# --- one real engine, in-process (no Ray) ----------------------------------------------------

PROMPTS = ["Describe the image in detail.", "What is in this picture?"]
SHARD = "00001"
BAD_IMAGE, FAILED = "000010002", "000019999"


@pytest.fixture(scope="module")
def llava_worker(tiny_models):
    from pipeline.recaption_config import ModelConfig
    from recaption.actor import EngineWorker

    cfg = ModelConfig(
        name="llava",
        family="llava-1.5",
        path=str(tiny_models["llava-1.5"]),
        prompts=list(PROMPTS),
        max_tokens=16,
        batch_size=2,  # 3 decodable images: two engine calls
        seed=3,
    )
    return EngineWorker(cfg)


@pytest.fixture(scope="module")
def decoded_unit(tmp_path_factory):
    from recaption.units import decode_shard
    from tests.recaption.conftest import make_input_shards

    root = make_input_shards(tmp_path_factory.mktemp("engine") / "in", shards=2, per_shard=4)
    decoded = decode_shard(str(root), SHARD, get_family("llava-1.5").image_size)
    assert len(decoded.order) == 5  # 4 in the tar (one corrupt) + 1 failed download
    return decoded


@pytest.mark.slow
def test_engine_worker_captions_a_unit(llava_worker, decoded_unit, tmp_path):
    from recaption.units import CAPTION_SCHEMA, read_unit, unit_path

    assert llava_worker.ready() > 0
    out = tmp_path / "out"
    summary = llava_worker.caption_unit(decoded_unit, str(out))
    path = unit_path(out, "llava", SHARD)
    assert path.exists()
    table = read_unit(path)
    assert table.schema.equals(CAPTION_SCHEMA)
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == decoded_unit.order  # one row per key, input order
    by_key = {r["key"]: r for r in rows}
    assert by_key[BAD_IMAGE]["status"] == "image_decode_error"
    assert "00001.tar" in by_key[BAD_IMAGE]["error"]
    assert by_key[FAILED]["status"] == "failed_to_download"
    assert "404" in by_key[FAILED]["error"]
    for key in (BAD_IMAGE, FAILED):
        assert by_key[key]["text"] is None and by_key[key]["prompt"] is None
        assert by_key[key]["model"] == "llava"
    engine_rows = [by_key[k] for k in decoded_unit.keys]
    assert len(engine_rows) == 3
    for r in engine_rows:
        assert r["model"] == "llava"
        assert r["status"] in ("ok", "empty_output")
        assert r["prompt"] == choose_prompt(PROMPTS, 3, r["key"])
        assert r["finish_reason"] in ("stop", "length")
        assert 0 <= r["generated_tokens"] <= 16
        assert isinstance(r["raw_text"], str)
        assert isinstance(r["flags"], list)
        if r["status"] == "ok":
            assert r["text"] and r["text"].strip() == r["text"]
            assert r["generated_tokens"] >= 1
        else:
            assert r["text"] is None and r["error"]
    ok = [r for r in engine_rows if r["status"] == "ok"]
    assert ok, "the tiny model captioned nothing"
    assert summary["model"] == "llava" and summary["shard"] == SHARD
    assert summary["images"] == 5 and summary["engine_images"] == 3
    assert summary["captioned"] == len(ok)
    assert summary["failures"].get("image_decode_error") == 1
    assert summary["failures"].get("failed_to_download") == 1
    assert summary["generated_tokens"] == sum(r["generated_tokens"] for r in engine_rows)
    # No temporary file is left next to the unit.
    assert [p.name for p in path.parent.iterdir()] == [path.name]

    # The same unit again in the same engine: the same rows (seeded per key, same batches).
    again = llava_worker.caption_unit(decoded_unit, str(tmp_path / "again"))
    assert again["captioned"] == summary["captioned"]
    rows2 = pq.read_table(unit_path(tmp_path / "again", "llava", SHARD)).to_pylist()
    assert rows2 == rows
