"""Shared fixtures: small generated datasets, built fresh in each test's tmp_path."""

from __future__ import annotations

import os

import pytest

# Nothing in the suite may reach a model hub or an update check.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def sample_manifest(tmp_path):
    """A 24-image manifest with two pretend models, plus three bad rows."""
    from pipeline.sample_data import make_sample

    return make_sample(tmp_path / "sample", n=24, size=48, seed=1)


@pytest.fixture
def built_shards(tmp_path, sample_manifest):
    """Shards assembled from `sample_manifest`, 10 samples per shard."""
    from shards.assemble import AssembleConfig, assemble

    out = tmp_path / "shards"
    assemble(sample_manifest, out, AssembleConfig(shard_size=10))
    return out
