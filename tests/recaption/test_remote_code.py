"""trust_remote_code (issue 10, finding 12): only a model whose own config says
`trust_remote_code: true` may run code from its folder; a family that needs it stops clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.recaption import main
from pipeline.recaption_config import ConfigError, load_config
from recaption.families import FAMILIES


def _config(tmp_path: Path, arch: str | None, **model) -> Path:
    folder = tmp_path / "internvl"
    folder.mkdir(exist_ok=True)
    if arch is not None:
        (folder / "config.json").write_text(json.dumps({"architectures": [arch]}))
    entry = {"name": "ivl", "family": "internvl", "path": str(folder), **model}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"input": "in", "output": "out", "models": [entry]}))
    return path


def test_no_family_turns_remote_code_on_by_itself():
    assert all("trust_remote_code" not in f.engine_defaults for f in FAMILIES.values())


def test_internvl_with_remote_code_stops_without_the_flag(tmp_path, capsys):
    path = _config(tmp_path, "InternVLChatModel")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg and "models[0].trust_remote_code" in msg
    assert "InternVLChatModel" in msg and "trust_remote_code: true" in msg
    # Through the command: a config error, exit 2, before any Ray or engine starts.
    assert main(["--config", str(path)]) == 2
    assert "trust_remote_code" in capsys.readouterr().err


def test_internvl_with_the_flag_or_a_native_checkpoint_loads(tmp_path):
    assert load_config(_config(tmp_path, "InternVLChatModel", trust_remote_code=True))
    cfg = load_config(_config(tmp_path, "InternVLForConditionalGeneration"))
    assert cfg.models[0].trust_remote_code is False  # the "-hf" release runs no folder code


def test_unknown_architecture_is_treated_as_remote_code(tmp_path):
    with pytest.raises(ConfigError, match="trust_remote_code"):
        load_config(_config(tmp_path, None))  # no config.json to say otherwise


def test_engine_kwargs_cannot_smuggle_it_in(tmp_path):
    path = _config(tmp_path, "InternVLForConditionalGeneration")
    data = yaml.safe_load(path.read_text())
    data["models"][0]["engine_kwargs"] = {"trust_remote_code": True}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="engine_kwargs: must not set trust_remote_code"):
        load_config(path)


def test_engine_refuses_before_vllm_loads(tmp_path):
    """A config built in code, past the file checks: the engine itself still refuses."""
    from pipeline.recaption_config import ModelConfig
    from recaption.engine import _refuse_remote_code

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["InternVLChatModel"]}))
    m = ModelConfig(name="ivl", family="internvl", path=str(folder))
    with pytest.raises(ValueError, match="trust_remote_code: true"):
        _refuse_remote_code(m, FAMILIES["internvl"].remote_code_architectures)
