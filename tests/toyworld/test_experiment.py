"""The toy experiment: variant definitions, the summary over seeds, and one `--quick` run through
the real pipeline (img2dataset on loopback, the trained captioners on vLLM CPU in Ray, assembly,
three trainings, held-out evaluation)."""

from __future__ import annotations

import json

import pytest

from toyworld import experiment as ex

KEYS = {"long_i2t_r1", "long_t2i_r1", "short_i2t_r1", "short_t2i_r1"}


def test_variants_are_the_three_of_lotlip_and_the_sweep():
    assert ex.variant_config("short") == {"long_texts": 0, "corner_tokens": 0}
    k4 = {"text_mode": "k", "subcaptions": 4}
    assert ex.variant_config("long") == {"corner_tokens": 0, **k4}
    assert ex.variant_config("lotlip") == {"corner_tokens": 2, **k4}
    assert ex.variant_config("k2") == {"corner_tokens": 2, "text_mode": "k", "subcaptions": 2}
    assert ex.variant_config("fill") == {"corner_tokens": 2, "text_mode": "fill"}
    with pytest.raises(ValueError, match="no variant 'medium'"):
        ex.variant_config("medium")


def _fake(seed, short, long, lotlip):
    def fig(long_r1, short_r1):
        return {k: (long_r1 if k.startswith("long") else short_r1) for k in ex.METRICS}

    return {
        "seed": seed,
        "variants": {"short": fig(*short), "long": fig(*long), "lotlip": fig(*lotlip)},
        "sweep_long_i2t_r1": {"0": short[0], "1": 20.0, "fill": lotlip[0]},
    }


def test_summary_mean_std_and_ordering(tmp_path):
    paths = []
    for seed, lot in ((1, (60.0, 9.0)), (2, (50.0, 7.0))):
        p = tmp_path / f"s{seed}.json"
        p.write_text(json.dumps(_fake(seed, (5.0, 8.0), (55.0, 8.0), lot)))
        paths.append(p)
    s = ex.summarize(paths)
    assert s["seeds"] == [1, 2]
    assert s["table"]["lotlip"]["long_i2t_r1"] == {"mean": 55.0, "std": 7.07}
    assert s["sweep_long_i2t_r1"]["1"] == {"mean": 20.0, "std": 0.0}
    o1, o2 = s["ordering_per_seed"]["1"], s["ordering_per_seed"]["2"]
    assert all(o1.values())
    assert not o2["long_i2t: lotlip >= long"] and not o2["short_i2t: lotlip >= short"]
    table = ex.format_table(s)
    assert "| lotlip | 55.0 ± 7.1 |" in table and table.count("\n") == 4


@pytest.mark.slow
def test_quick_experiment_through_the_cli(tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "toy"
    assert main(["toy", "experiment", "--quick", "--seed", "3", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["seed"] == 3 and res["quick"] is True
    assert set(res["variants"]) == {"short", "long", "lotlip"}
    for v in res["variants"].values():
        assert KEYS <= set(v) and all(0.0 <= x <= 100.0 for x in v.values())
    assert set(res["sweep_long_i2t_r1"]) == {"0", "4"}
    assert (out / "results.png").stat().st_size > 1000
    # Both captioners wrote captions the scorer reads back, on images that went through the
    # whole pipeline.
    assert set(res["caption_accuracy"]) == set(ex.CAPTIONERS)
    assert all(a["recall"] > 0.5 for a in res["caption_accuracy"].values())
    # Training moved the numbers: long texts teach long-text retrieval, and every variant
    # learned the alt-text.
    before, v = res["untrained"], res["variants"]
    chance = 100 / res["scale"]["heldout_images"]
    assert v["lotlip"]["long_i2t_r1"] > max(before["long_i2t_r1"], chance) + 5
    assert v["long"]["long_t2i_r1"] > max(before["long_t2i_r1"], chance) + 5
    assert v["short"]["short_t2i_r1"] > before["short_t2i_r1"]
    assert "results:" in capsys.readouterr().out
