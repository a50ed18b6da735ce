"""Toy samples from scenes: the manifest and the loopback URL list built from them."""

from __future__ import annotations

import csv
import io
import json

from toyworld.samples import make_scene_samples
from toyworld.scenes import Scene, alt_text


def test_scene_manifest_rows_carry_alt_text_and_truth_and_repeat_with_the_seed(tmp_path):
    a = make_scene_samples(tmp_path / "a", n=8, seed=3)
    b = make_scene_samples(tmp_path / "b", n=8, seed=3)
    assert a.read_text() == b.read_text()
    for row in map(json.loads, a.read_text().splitlines()):
        scene = Scene.from_dict(row["truth"])
        assert 2 <= len(scene.objects) <= 6
        assert row["caption"] == alt_text(scene) and row["source"] == "toyworld"
        img = a.parent / row["image_path"]
        assert img.read_bytes() == (b.parent / row["image_path"]).read_bytes()
    other = make_scene_samples(tmp_path / "c", n=8, seed=4)
    assert other.read_text() != a.read_text()


def _csv_rows(path):
    return list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8", "replace"))))


def test_url_list_of_scenes_has_truth_and_the_same_awkward_rows(tmp_path):
    from toyworld.loopback import make_url_list

    path = make_url_list(tmp_path / "s", "http://127.0.0.1:1", n=5, scenes=True, seed=1)
    header, *rows = _csv_rows(path)
    assert header == ["url", "caption", "truth"]
    assert all(len(r) == 3 for r in rows)
    good = [r for r in rows if r[2]]  # the awkward rows have no truth
    assert len(good) == 5
    for url, caption, truth in good:
        assert caption == alt_text(Scene.from_dict(json.loads(truth)))
        assert (tmp_path / "s" / "www" / url.split("/", 3)[3]).exists()
    assert len(rows) == 5 + 7  # the bad rows, as in the default list


def test_default_url_list_is_unchanged_by_the_scenes_option(tmp_path):
    """`make demo` uses the default: DreamLIP-shaped columns, no truth."""
    from toyworld.loopback import LIST_LONG_COLUMNS, make_url_list

    path = make_url_list(tmp_path / "d", "http://127.0.0.1:1", n=3)
    header, *rows = _csv_rows(path)
    assert header == ["url", "caption", *LIST_LONG_COLUMNS]
    assert len(rows) == 3 + 7 and all(len(r) == 5 for r in rows)
    assert rows[-1][0] == "http://127.0.0.1:1/images/000000.jpg?v=2"
