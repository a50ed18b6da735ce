"""The `longcap` command line: shards and stats, as a user types them."""

from __future__ import annotations

import json
import subprocess
import sys

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
