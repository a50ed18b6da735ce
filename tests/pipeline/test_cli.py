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
    assert "caption_accuracy" not in report  # no truth in these shards


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


def _truth_manifest(tmp_path, n: int = 12):
    """Scene samples whose long captions are written from the truth: `exact` names every object
    right, `sloppy` names the first object in the wrong cell and adds an object that is not
    there (a purple bar when the scene has none)."""
    from toyworld.samples import make_scene_samples
    from toyworld.scenes import Scene

    manifest = make_scene_samples(tmp_path / "toy", n=n, seed=5)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    expected = {"objects": 0, "halluc": 0}
    for r in rows:
        scene = Scene.from_dict(r["truth"])
        objs = scene.objects
        items = [f"{o.phrase()} at {o.cell}" for o in objs]
        exact = f"{len(objs)} shapes on a {scene.background} background: {', '.join(items)}."
        wrong = "bottom right" if objs[0].cell != "bottom right" else "top left"
        sloppy = [f"In the {wrong} there is {objs[0].phrase()}."]
        sloppy += [f"In the {o.cell} there is {o.phrase()}." for o in objs[1:]]
        if not any((o.color, o.shape) == ("purple", "bar") for o in objs):
            sloppy.append("In the center there is a small purple bar.")
            expected["halluc"] += 1
        expected["objects"] += len(objs)
        r["long_captions"] = {"exact": exact, "sloppy": " ".join(sloppy)}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, expected


def test_stats_shows_caption_accuracy_when_shards_carry_truth(tmp_path, capsys):
    manifest, expected = _truth_manifest(tmp_path)
    out = tmp_path / "out"
    assert main(["shards", "--input", str(manifest), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["stats", str(out), "--json"]) == 0
    acc = json.loads(capsys.readouterr().out)["caption_accuracy"]
    assert acc["images"] == 12 and acc["unreadable_truth"] == 0
    exact, sloppy = acc["by_model"]["exact"], acc["by_model"]["sloppy"]
    assert exact["truth_objects"] == exact["correct"] == expected["objects"]
    assert exact["recall"] == 1.0 and exact["hallucination_rate"] == 0.0
    assert exact["background_accuracy"] == 1.0
    assert sloppy["correct"] == expected["objects"] - 12 and sloppy["misplaced"] == 12
    assert sloppy["hallucinated"] == expected["halluc"] > 0
    assert sloppy["background_accuracy"] == 0.0 and sloppy["misplaced_rate"] > 0
    # The alt-text names the most salient object only, with no cell: recall 0, nothing invented.
    assert acc["raw"]["mentions"] == 12 and acc["raw"]["correct"] == 0
    assert acc["raw"]["hallucinated"] == 0
    assert main(["stats", str(out)]) == 0
    table = capsys.readouterr().out
    assert "caption accuracy against truth (12 images with truth)" in table
    line = next(x for x in table.splitlines() if x.startswith("model exact"))
    assert "100.0%" in line and "0.0%" in line
