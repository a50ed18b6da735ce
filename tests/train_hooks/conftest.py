"""Trainer test fixtures: a small shard folder built by `longcap shards`, once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory):
    from pipeline.cli import main as longcap
    from toyworld.sample_data import make_sample

    root = tmp_path_factory.mktemp("train_data")
    manifest = make_sample(root / "sample", n=40, seed=1, size=48)
    out = root / "shards"
    rc = longcap(["shards", "--input", str(manifest), "--out", str(out), "--shard-size", "12"])
    assert rc == 0
    return out
