"""The recaption config: YAML -> validated dataclasses; every bad config names file and field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.recaption_config import (
    DEFAULT_PROMPTS,
    ConfigError,
    ModelConfig,
    RecaptionConfig,
    load_config,
    parse_config,
)
from recaption.families import FAMILIES


def _minimal(tmp_path: Path) -> dict:
    """input, output and one model with name/family/path only; the path is an existing folder."""
    (tmp_path / "models" / "llava").mkdir(parents=True, exist_ok=True)
    return {
        "input": "in",
        "output": "out",
        "models": [{"name": "llava", "family": "llava-1.5", "path": "models/llava"}],
    }


def _write(tmp_path: Path, data, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _error(tmp_path: Path, data) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg, f"the message does not name the file: {msg}"
    return msg


def _two_models(tmp_path: Path, **second) -> dict:
    data = _minimal(tmp_path)
    data["models"].append(
        {"name": "other", "family": "llava-1.5", "path": "models/llava", **second}
    )
    return data


def _defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_minimal_config_gets_every_default(tmp_path):
    cfg = load_config(_write(tmp_path, _minimal(tmp_path)))
    assert isinstance(cfg, RecaptionConfig)
    top = _defaults(RecaptionConfig)
    assert set(top) == {f.name for f in dataclasses.fields(RecaptionConfig)} - {
        "input",
        "output",
        "models",
    }
    for name, value in top.items():
        assert getattr(cfg, name) == value, name
    [m] = cfg.models
    assert isinstance(m, ModelConfig)
    assert (m.name, m.family) == ("llava", "llava-1.5")
    model = _defaults(ModelConfig)
    assert set(model) == {f.name for f in dataclasses.fields(ModelConfig)} - {
        "name",
        "family",
        "path",
    }
    model["engine"] = "vllm"  # default None: the family's first engine, vllm for llava-1.5
    for name, value in model.items():
        assert getattr(m, name) == value, name
    # The defaults that matter to a user, spelled out: a CPU run, the documented prompt.
    assert m.gpus_per_replica == 0
    assert m.prompts == DEFAULT_PROMPTS == ["Describe the image in detail."]
    assert (m.temperature, m.top_p, m.seed, m.replicas) == (0.2, 1.0, 0, 1)
    assert m.image_size is None and m.max_model_len is None and m.engine_kwargs == {}
    assert (cfg.ray_address, cfg.shards, cfg.progress) == (None, None, True)
    # The default prompt list is a copy: changing one config's prompts changes nothing else.
    m.prompts.append("x")
    assert DEFAULT_PROMPTS == ["Describe the image in detail."]
    assert load_config(tmp_path / "run.yaml").models[0].prompts == DEFAULT_PROMPTS


def test_every_field_given_is_kept(tmp_path):
    data = _minimal(tmp_path)
    data.update(max_unit_retries=0, prefetch_units=5, shards=["00001"], progress=False)
    data["models"][0].update(
        prompts=["a", "b"],
        max_tokens=16,
        temperature=0,
        top_p=0.5,
        seed=7,
        gpus_per_replica=2,
        image_size=224,
        engine_kwargs={"max_num_seqs": 4},
    )
    cfg = load_config(_write(tmp_path, data))
    m = cfg.models[0]
    assert (cfg.max_unit_retries, cfg.prefetch_units, cfg.shards) == (0, 5, ["00001"])
    assert cfg.progress is False
    assert m.prompts == ["a", "b"]
    assert (m.max_tokens, m.seed, m.image_size) == (16, 7, 224)
    assert m.temperature == 0.0 and isinstance(m.temperature, float)
    assert m.top_p == 0.5
    assert m.gpus_per_replica == 2.0 and isinstance(m.gpus_per_replica, float)
    assert m.engine_kwargs == {"max_num_seqs": 4}


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    conf.mkdir()
    data = _minimal(conf)
    data["input"] = "../data/in"
    _write(conf, data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the config's folder: cwd must not matter
    cfg = load_config(Path("..") / "conf" / "run.yaml")
    assert cfg.input == str((tmp_path / "data" / "in").resolve())
    assert cfg.output == str((conf / "out").resolve())
    assert cfg.models[0].path == str((conf / "models" / "llava").resolve())
    assert Path(cfg.models[0].path).is_absolute()


def test_absolute_paths_are_kept(tmp_path):
    data = _minimal(tmp_path)
    folder = (tmp_path / "models" / "llava").resolve()
    data.update(input=str(tmp_path / "x"), output=str(tmp_path / "y"))
    data["models"][0]["path"] = str(folder)
    cfg = load_config(_write(tmp_path / "models", data))
    assert cfg.input == str((tmp_path / "x").resolve())
    assert cfg.output == str((tmp_path / "y").resolve())
    assert cfg.models[0].path == str(folder)


def test_hub_id_shaped_path_is_accepted_as_is(tmp_path):
    data = _minimal(tmp_path)
    data["models"][0]["path"] = "llava-hf/llava-1.5-7b-hf"
    cfg = load_config(_write(tmp_path, data))
    assert cfg.models[0].path == "llava-hf/llava-1.5-7b-hf"


@pytest.mark.parametrize("path", ["no-such-folder", "./llava-hf/llava", "a/b/c", "/no/such/dir"])
def test_model_path_neither_folder_nor_hub_id(tmp_path, path):
    data = _two_models(tmp_path, path=path)
    msg = _error(tmp_path, data)
    assert "models[1].path" in msg
    assert repr(path) in msg
    assert "neither a folder nor a hub id" in msg


@pytest.mark.parametrize(
    "drop, field",
    [("input", "input"), ("output", "output"), ("models", "models")],
)
def test_missing_top_level_field(tmp_path, drop, field):
    data = _minimal(tmp_path)
    del data[drop]
    msg = _error(tmp_path, data)
    assert f"{field}: is required" in msg


@pytest.mark.parametrize("drop", ["name", "family", "path"])
def test_missing_model_field(tmp_path, drop):
    data = _two_models(tmp_path)
    del data["models"][1][drop]
    msg = _error(tmp_path, data)
    assert f"models[1].{drop}: is required" in msg


def test_unknown_top_level_field(tmp_path):
    data = _minimal(tmp_path)
    data["modles"] = []
    msg = _error(tmp_path, data)
    assert msg.startswith(f"{tmp_path / 'run.yaml'}: unknown field(s) ['modles']"), msg
    assert "'models'" in msg  # the known fields are listed


def test_unknown_model_field(tmp_path):
    data = _two_models(tmp_path, max_token=5)
    msg = _error(tmp_path, data)
    assert "models[1]: unknown field(s) ['max_token']" in msg
    assert "'max_tokens'" in msg


@pytest.mark.parametrize(
    "field, value, expect",
    [
        ("max_tokens", "many", "must be an integer"),
        ("max_tokens", True, "must be an integer"),  # YAML true is not 1
        ("max_tokens", 16.0, "must be an integer"),
        ("seed", "0", "must be an integer"),
        ("temperature", "hot", "must be a number"),
        ("temperature", False, "must be a number"),
        ("name", "", "must be a non-empty string"),
        ("name", 5, "must be a non-empty string"),
        ("prompts", "Describe.", "must be a list of non-empty strings"),
        ("prompts", ["ok", ""], "must be a list of non-empty strings"),
        ("engine_kwargs", ["x"], "must be a mapping"),
        ("image_size", "big", "must be an integer"),
    ],
)
def test_wrong_type_in_model(tmp_path, field, value, expect):
    data = _two_models(tmp_path, **{field: value})
    msg = _error(tmp_path, data)
    assert f"models[1].{field}: {expect}" in msg


@pytest.mark.parametrize(
    "field, value, expect",
    [
        ("max_unit_retries", "2", "must be an integer"),
        ("progress", "yes", "must be true or false"),
        ("shards", "00001", "must be a list of non-empty strings"),
        ("input", 3, "must be a non-empty string"),
        ("ray_address", 6379, "must be a non-empty string"),
    ],
)
def test_wrong_type_at_top_level(tmp_path, field, value, expect):
    data = _minimal(tmp_path)
    data[field] = value
    msg = _error(tmp_path, data)
    assert f"{field}: {expect}" in msg


def test_model_entry_not_a_mapping(tmp_path):
    data = _minimal(tmp_path)
    data["models"].append("llava")
    msg = _error(tmp_path, data)
    assert "models[1]: must be a mapping" in msg


def test_unknown_family_lists_the_known_ones(tmp_path):
    data = _two_models(tmp_path, family="llava-2")
    msg = _error(tmp_path, data)
    assert "models[1].family" in msg
    assert "'llava-2'" in msg
    for name in FAMILIES:
        assert repr(name) in msg


def test_duplicate_model_names(tmp_path):
    data = _two_models(tmp_path, name="llava")
    msg = _error(tmp_path, data)
    assert "models: model names must be unique" in msg
    assert "['llava']" in msg


@pytest.mark.parametrize("name", ["my model", "a/b", ".hidden", "-x", "caf\u00e9!"])
def test_bad_model_name_characters(tmp_path, name):
    data = _two_models(tmp_path, name=name)
    msg = _error(tmp_path, data)
    assert "models:" in msg and "letters, digits, -_. only" in msg
    assert repr(name) in msg


@pytest.mark.parametrize("name", ["llava_7b", "Qwen2.5-VL", "a"])
def test_good_model_names(tmp_path, name):
    data = _two_models(tmp_path, name=name)
    assert load_config(_write(tmp_path, data)).models[1].name == name


@pytest.mark.parametrize("models", [[], None, {"name": "x"}])
def test_models_must_be_a_non_empty_list(tmp_path, models):
    data = _minimal(tmp_path)
    data["models"] = models
    msg = _error(tmp_path, data)
    assert "models: must be a non-empty list" in msg


@pytest.mark.parametrize(
    "field, value, expect",
    [
        ("temperature", -0.1, "must be >= 0"),
        ("gpus_per_replica", 1.5, "above 1 must be a whole number"),
        ("gpus_per_replica", -1, "must be >= 0"),
        ("top_p", 0, "must be in (0, 1]"),
        ("top_p", 1.5, "must be in (0, 1]"),
        ("max_tokens", 0, "must be >= 1"),
        ("replicas", 0, "must be >= 1"),
        ("batch_size", 0, "must be >= 1"),
        ("cpus_per_replica", 0, "must be > 0"),
        ("prompts", [], "must hold at least one prompt"),
        ("image_size", 8, "must be >= 14 pixels"),
    ],
)
def test_out_of_range_model_values(tmp_path, field, value, expect):
    data = _two_models(tmp_path, **{field: value})
    msg = _error(tmp_path, data)
    assert f"models[1].{field}: {expect}" in msg
    assert ", got " in msg  # the offending value is shown


def test_fractional_gpu_below_one_is_allowed(tmp_path):
    data = _two_models(tmp_path, gpus_per_replica=0.5)
    assert load_config(_write(tmp_path, data)).models[1].gpus_per_replica == 0.5


@pytest.mark.parametrize("field", ["max_unit_retries", "max_actor_restarts", "prefetch_units"])
def test_negative_top_level_counts(tmp_path, field):
    data = _minimal(tmp_path)
    data[field] = -1
    msg = _error(tmp_path, data)
    assert f"{field}: must be >= 0" in msg


def test_invalid_yaml(tmp_path):
    msg = _error(tmp_path, "input: [unclosed\nmodels: {\n")
    assert "not valid YAML" in msg


def test_unreadable_file(tmp_path):
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "cannot read the config" in str(info.value)


def test_a_folder_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "42\n"])
def test_top_level_not_a_mapping(tmp_path, text):
    msg = _error(tmp_path, text)
    assert "the top level must be a mapping" in msg


def test_parse_config_names_its_source(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config({"input": "a", "output": "b", "models": []}, source="job.json")
    assert str(info.value).startswith("job.json: models:")
    # parse_config alone does not check paths: those are load_config's (relative to the file).
    cfg = parse_config(
        {"input": "a", "output": "b", "models": [{"name": "m", "family": "blip-2", "path": "x"}]}
    )
    assert cfg.models[0].path == "x"
    assert dataclasses.asdict(cfg)["models"][0]["family"] == "blip-2"


def test_config_error_is_a_value_error():
    # The CLI reports ValueErrors as a clean one-line error (pipeline.cli.main).
    assert issubclass(ConfigError, ValueError)


def test_family_must_match_the_checkpoint_architecture(tmp_path):
    import json

    from pipeline.recaption_config import ConfigError, load_config

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"architectures": ["Qwen2VLForConditionalGeneration"]})
    )
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"input: in\noutput: out\nmodels:\n  - {{name: a, family: llava-1.5, path: {model}}}\n"
    )
    with pytest.raises(ConfigError, match=r"models\[0\]\.family: 'llava-1.5' expects"):
        load_config(cfg)
    cfg.write_text(
        f"input: in\noutput: out\nmodels:\n  - {{name: a, family: qwen2-vl, path: {model}}}\n"
    )
    assert load_config(cfg).models[0].family == "qwen2-vl"
