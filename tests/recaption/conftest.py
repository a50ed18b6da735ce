"""Fixtures for the recaption tests: tiny models, small input shards, a Ray head on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest


def make_input_shards(root: Path, shards: int = 3, per_shard: int = 6) -> Path:
    """img2dataset-style shards; shard 00001 holds a corrupt image and a failed download."""
    from tests.shards.helpers import jpeg_bytes, write_i2d_shard

    for s in range(shards):
        ok = [
            {
                "key": f"{s:05d}{i:04d}",
                "url": f"http://127.0.0.1/{s}/{i}.jpg",
                "caption": f"image {i} of shard {s}",
                "jpg": jpeg_bytes(color=(40 * i % 256, 30 * s % 256, 120), size=(64, 48)),
            }
            for i in range(per_shard)
        ]
        failed = []
        if s == 1:
            ok[2]["jpg"] = b"\xff\xd8\xff this is not a jpeg"
            failed = [
                {
                    "key": f"{s:05d}9999",
                    "url": "http://127.0.0.1/404.jpg",
                    "status": "failed_to_download",
                    "error": "HTTP Error 404: Not Found",
                }
            ]
        write_i2d_shard(root, f"{s:05d}", ok, failed)
    return root


@pytest.fixture
def input_shards(tmp_path):
    return make_input_shards(tmp_path / "in")


def write_config(path: Path, input_dir: Path, output: Path, models: dict, **extra) -> Path:
    import yaml

    cfg = {
        "input": str(input_dir),
        "output": str(output),
        "models": [
            {
                "name": name,
                "family": family,
                "path": str(model_path),
                "prompts": ["Describe the image in detail.", "What is in this picture?"],
                "max_tokens": 24,
                "batch_size": 4,
            }
            for name, (family, model_path) in models.items()
        ],
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path
