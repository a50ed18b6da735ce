"""Shared fixtures: small generated datasets, built fresh in each test's tmp_path."""

from __future__ import annotations

import os

import pytest

# Nothing in the suite may reach a model hub or an update check.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray 2.60 turns token auth on for a cluster whenever ~/.ray/auth_token exists (any earlier local
# ray.init() writes one), and a client given only an address then fails with InvalidAuthToken.
# The test clusters listen on 127.0.0.1 only: run them, and their clients, without auth.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The two tiny VLMs `longcap tiny-models` makes (built once per test session)."""
    pytest.importorskip("vllm")
    from recaption.tiny_models import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("models"))
