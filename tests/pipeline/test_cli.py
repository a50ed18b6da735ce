"""The `longcap` command line: shards and stats, as a user types them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.cli import main


def test_shards_then_stats_json(tmp_path, sample_manifest, capsys):
    out = tmp_path / "out"
    assert main(["shards", "--input", str(sample_manifest), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "27 samples, 24 ok, 3 failed" in printed
    assert main(["stats", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("images", "texts", "subcaptions_per_text", "tokens_per_text", "by_model"):
        assert key in report
    assert report["images"] == 24 and report["texts"] == 48
    for model in ("llava", "qwen"):
        assert set(report["by_model"][model]) >= {
            "texts",
            "subcaptions_per_text",
            "tokens_per_text",
        }
        assert report["by_model"][model]["texts"] == 24


def test_stats_table_and_plots(built_shards, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert main(["stats", str(built_shards), "--plots", str(plots)]) == 0
    printed = capsys.readouterr().out
    assert "long captions (all models)" in printed and ">248" in printed
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["subcaptions_per_text.png", "tokens_per_text.png"]
    assert all((plots / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_errors_name_the_file_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"key": "a", "caption": "x"}\n')
    assert main(["shards", "--input", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "no image column" in err


def test_console_script_runs(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "stats", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no longcap shards" in r.stderr


def _long_texts(out):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("*.parquet"))])
    return [lc for row in table.to_pylist() if row["status"] == "ok" for lc in row["long_captions"]]


def test_shards_split_engine_regex_is_lotlip_split(tmp_path, sample_manifest, capsys):
    from shards.split import lotlip_split

    out = tmp_path / "out"
    args = ["shards", "--input", str(sample_manifest), "--out", str(out)]
    assert main([*args, "--split-engine", "regex"]) == 0
    longs = _long_texts(out)
    assert longs and all(lc["subcaptions"] == lotlip_split(lc["text"]) for lc in longs)
    with pytest.raises(SystemExit):  # argparse refuses it and names the choices
        main([*args, "--split-engine", "spacy"])
    assert "choose from 'rules', 'punkt', 'regex'" in capsys.readouterr().err


def test_stats_split_engine_regex_recounts_stored_texts(built_shards, capsys):
    """`stats --split-engine regex` re-splits the stored long captions (from Parquet) the way
    LoTLIP counted its Table 1, whatever engine built the shards."""
    from shards.split import lotlip_split

    longs = _long_texts(built_shards)
    expected = sum(len(lotlip_split(lc["text"])) for lc in longs) / len(longs)
    stored = sum(len(lc["subcaptions"]) for lc in longs) / len(longs)
    assert expected != stored  # the sample captions hold "e.g."-like periods: counts differ
    assert main(["stats", str(built_shards), "--json", "--split-engine", "regex"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split_engine"] == "regex" and report["texts"] == len(longs)
    assert abs(report["subcaptions_per_text"] - expected) < 1e-9
    assert main(["stats", str(built_shards), "--json"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["subcaptions_per_text"] - stored) < 1e-9
    assert main(["stats", str(built_shards), "--split-engine", "regex"]) == 0
    assert "re-split with engine 'regex'" in capsys.readouterr().out


def test_stats_split_engine_needs_parquet(tmp_path, sample_manifest, capsys):
    out = tmp_path / "out"
    args = ["shards", "--input", str(sample_manifest), "--out", str(out), "--formats", "tar"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["stats", str(out), "--split-engine", "regex"]) == 2
    err = capsys.readouterr().err
    assert "00000.parquet: missing" in err and "--formats parquet,tar" in err


def test_build_yaml_assemble_split_engine(tmp_path):
    import yaml

    from pipeline.build import load_build_config
    from pipeline.recaption_config import ConfigError

    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a\n")
    model = tmp_path / "model"
    model.mkdir()
    cfg = {
        "output": str(tmp_path / "out"),
        "ingest": {"url_list": str(urls)},
        "models": [{"name": "m", "family": "llava-1.5", "path": str(model)}],
        "assemble": {"split_engine": "regex"},
    }
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert load_build_config(path).assemble.split_engine == "regex"
    cfg["assemble"]["split_engine"] = "spacy"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="assemble: split_engine must be one of rules, punkt"):
        load_build_config(path)
