"""Joining recaption outputs (captions/<model>/NNNNN.parquet) to input shards during assembly."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recaption.units import decode_shard, unit_path, write_unit
from shards.assemble import AssembleConfig, assemble
from shards.captions_join import NOT_CAPTIONED, CaptionJoin
from shards.inputs import InputError, InputSample
from tests.recaption.conftest import make_input_shards

SHARDS, PER_SHARD = 3, 4
TEXT_A = "A red square sits on a grey table. It is lit from the left. The shadow is soft."
EMPTY_KEY = "000000001"  # model b: the engine produced no usable text for it
BAD_IMAGE, FAILED = "000010002", "000019999"


def _unit_rows(root: Path, shard: str, model: str, text: str, empty: set[str] = frozenset()):
    """Rows as `EngineWorker.caption_unit` writes them: every key, input order."""
    decoded = decode_shard(str(root), shard, 64)
    rows = []
    for key in decoded.order:
        if key in decoded.failures:
            status, error = decoded.failures[key]
            rows.append({"key": key, "status": status, "error": error, "model": model})
        elif key in empty:
            rows.append(
                {
                    "key": key,
                    "status": "empty_output",
                    "error": "the model generated no usable text",
                    "model": model,
                    "prompt": "Describe.",
                    "raw_text": "</s>",
                    "finish_reason": "stop",
                    "generated_tokens": 1,
                    "flags": [],
                }
            )
        else:
            rows.append(
                {
                    "key": key,
                    "status": "ok",
                    "model": model,
                    "prompt": "Describe.",
                    "text": f"{text} Key {key}.",
                    "raw_text": f"{text} Key {key}.</s>",
                    "finish_reason": "stop",
                    "generated_tokens": 30,
                    "flags": ["f1"],
                }
            )
    return rows


@pytest.fixture
def dataset(tmp_path):
    inp = make_input_shards(tmp_path / "in", shards=SHARDS, per_shard=PER_SHARD)
    recap = tmp_path / "recap"  # a recaption OUTPUT folder
    for s in range(SHARDS):
        shard = f"{s:05d}"
        write_unit(unit_path(recap, "a", shard), _unit_rows(inp, shard, "a", TEXT_A))
        if s != 2:  # model b has not captioned shard 00002 yet
            rows = _unit_rows(inp, shard, "b", "Blue.", empty={EMPTY_KEY})
            write_unit(unit_path(recap, "b", shard), rows)
    out = tmp_path / "out"
    result = assemble(inp, out, AssembleConfig(captions=str(recap)))
    rows = {}
    for p in sorted(out.glob("*.parquet")):
        for r in pq.read_table(p).to_pylist():
            rows[r["key"]] = r
    return {"in": inp, "recap": recap, "out": out, "result": result, "rows": rows}


def _longs(row) -> dict[str, dict]:
    return {lc["model"]: lc for lc in row["long_captions"]}


def test_every_ok_sample_has_one_entry_per_model(dataset):
    rows, result = dataset["rows"], dataset["result"]
    n = SHARDS * PER_SHARD + 1
    assert len(rows) == result.samples_in == n
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == result.samples_ok == n - 2
    for r in ok:
        assert [lc["model"] for lc in r["long_captions"]] == ["a", "b"]
        assert r["caption"]  # the raw caption is kept beside the long ones


def test_model_a_texts_are_split_and_counted(dataset):
    for r in dataset["rows"].values():
        if r["status"] != "ok":
            continue
        a = _longs(r)["a"]
        assert a["status"] == "ok"
        assert a["text"] == f"{TEXT_A} Key {r['key']}."
        assert a["subcaptions"] == [
            "A red square sits on a grey table.",
            "It is lit from the left.",
            "The shadow is soft.",
            f"Key {r['key']}.",
        ]
        assert a["tokens"] > 10
        assert len(a["subcaption_tokens"]) == 4 and all(t > 0 for t in a["subcaption_tokens"])
        assert sum(a["subcaption_tokens"]) == a["tokens"]
        # The generation details travel with the text.
        assert (a["prompt"], a["finish_reason"], a["generated_tokens"]) == ("Describe.", "stop", 30)
        assert a["flags"] == ["f1"]


def test_missing_unit_is_not_captioned_and_empty_output_kept(dataset):
    rows = dataset["rows"]
    for key, r in rows.items():
        if r["status"] != "ok":
            continue
        b = _longs(r)["b"]
        if key.startswith("00002"):
            assert b["status"] == NOT_CAPTIONED == "not_captioned"
            assert not b["text"] and not b["subcaptions"] and b["tokens"] is None
        elif key == EMPTY_KEY:
            assert b["status"] == "empty_output"
            assert not b["text"] and not b["subcaptions"]
        else:
            assert b["status"] == "ok" and b["text"] == f"Blue. Key {key}."
            assert len(b["subcaptions"]) == 2


def test_input_failures_stay_sample_failures(dataset):
    rows = dataset["rows"]
    assert rows[FAILED]["status"] == "failed_to_download"
    assert "404" in rows[FAILED]["error"]
    assert rows[BAD_IMAGE]["status"] == "image_decode_error"
    for key in (FAILED, BAD_IMAGE):
        assert rows[key]["long_captions"] == []
        assert rows[key]["image"] is None


def test_stats_report_per_model(dataset, capsys):
    from pipeline.cli import main

    capsys.readouterr()
    assert main(["stats", str(dataset["out"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    ok = SHARDS * PER_SHARD - 1
    assert report["samples"] == ok + 2
    assert report["images"] == ok
    by_model = report["by_model"]
    assert set(by_model) == {"a", "b"}
    assert by_model["a"]["texts"] == ok
    assert by_model["a"]["subcaptions_per_text"] == 4
    b_texts = ok - PER_SHARD - 1  # not shard 00002, not the empty output
    assert by_model["b"]["texts"] == b_texts
    assert by_model["b"]["subcaptions_per_text"] == 2
    assert report["texts"] == ok + b_texts
    fails = report["failures"]
    assert fails["failed_to_download"] == 1
    assert fails["image_decode_error"] == 1
    assert fails["b:not_captioned"] == PER_SHARD
    assert fails["b:empty_output"] == 1
    assert not any(k.startswith("a:") for k in fails)


def test_output_folder_or_its_captions_folder(dataset, tmp_path):
    recap = dataset["recap"]
    for given in (recap, recap / "captions"):
        join = CaptionJoin(given)
        assert join.root == recap / "captions"
        assert join.models == ["a", "b"]
    sample = InputSample(key="000020000", origin="x", shard="00002")
    join.attach(sample)
    a = sample.long_captions["a"]
    assert a["text"] == f"{TEXT_A} Key 000020000."
    assert a.get("status", "ok") == "ok"  # an ok entry: assemble's default status
    assert (a["prompt"], a["generated_tokens"], a["flags"]) == ("Describe.", 30, ["f1"])
    assert sample.long_captions["b"] == {
        "text": None,
        "status": NOT_CAPTIONED,
        "error": "unit not written yet",
    }
    # A key the unit does not hold is accounted for too, with its own reason.
    other = InputSample(key="stranger", origin="x", shard="00000")
    join.attach(other)
    assert other.long_captions["a"]["status"] == NOT_CAPTIONED
    assert other.long_captions["a"]["error"] == "key absent from the unit"
    # Back to a shard seen before: its rows are loaded again, not mixed up with the last one's.
    again = InputSample(key="000020001", origin="x", shard="00002")
    join.attach(again)
    assert again.long_captions["a"]["text"].endswith("Key 000020001.")


def test_captions_for_a_manifest_input_are_refused(tmp_path, dataset):
    from toyworld.sample_data import make_sample

    manifest = make_sample(tmp_path / "m", n=3, size=32)
    with pytest.raises(InputError) as info:
        assemble(manifest, tmp_path / "out2", AssembleConfig(captions=str(dataset["recap"])))
    msg = str(info.value)
    assert "captions can only be joined to a folder of shards" in msg
    assert str(manifest) in msg  # names the input row
    assert not list((tmp_path / "out2").glob("*.parquet"))  # nothing half-written


def test_captions_folder_without_models(tmp_path):
    inp = make_input_shards(tmp_path / "in", shards=1, per_shard=2)
    (tmp_path / "recap" / "captions").mkdir(parents=True)
    with pytest.raises(InputError) as info:
        assemble(inp, tmp_path / "out", AssembleConfig(captions=str(tmp_path / "recap")))
    assert "no model folders" in str(info.value)
    assert str(tmp_path / "recap" / "captions") in str(info.value)


def test_captions_folder_missing(tmp_path):
    with pytest.raises(InputError, match="no such captions folder"):
        CaptionJoin(tmp_path / "nope")


def test_a_parquet_that_is_not_a_caption_unit(tmp_path):
    inp = make_input_shards(tmp_path / "in", shards=1, per_shard=2)
    bad = tmp_path / "recap" / "captions" / "m" / "00000.parquet"
    bad.parent.mkdir(parents=True)
    pq.write_table(pa.table({"key": ["000000000"], "caption": ["x"]}), bad)
    with pytest.raises(InputError) as info:
        assemble(inp, tmp_path / "out", AssembleConfig(captions=str(tmp_path / "recap")))
    assert str(bad) in str(info.value) and "not a longcap caption file" in str(info.value)


def test_cli_shards_captions_flag(dataset, tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "cli_out"
    code = main(
        ["shards", "--input", str(dataset["in"]), "--out", str(out)]
        + ["--captions", str(dataset["recap"])]
    )
    assert code == 0
    table = pq.read_table(out / "00000.parquet", columns=["key", "long_captions"]).to_pylist()
    assert {lc["model"] for r in table for lc in r["long_captions"]} == {"a", "b"}
