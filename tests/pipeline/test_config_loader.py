"""The one config loader (issue 10, finding 13): build.yaml's sections are type-checked, errors
name the file, the field, the expected type and the value; unknown keys list the known ones."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pipeline.build import main as build_main
from pipeline.config_loader import ConfigError, check_value, field_default, load_dataclass


def _build_yaml(tmp_path, **sections):
    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a\n")
    cfg = {
        "output": str(tmp_path / "out"),
        "ingest": {"url_list": str(urls)},
        "models": [{"name": "m", "family": "llava-1.5", "path": "org/model"}],
        **sections,
    }
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "assemble, expect",
    [
        ({"batch_size": "10"}, "assemble.batch_size: must be an integer, got '10'"),
        (
            {"extra_abbreviations": "Dr."},
            "assemble.extra_abbreviations: must be a list of non-empty strings, got 'Dr.'",
        ),
        ({"verify_images": "no"}, "assemble.verify_images: must be true or false, got 'no'"),
        ({"formats": "tar"}, "assemble.formats: must be a list of non-empty strings"),
        (
            {"batchsize": 3},
            "assemble: unknown field(s) ['batchsize']; known: ['allow_paths_outside', 'batch_size'",
        ),
        ({"captions": "x"}, "assemble: unknown field(s) ['captions']"),  # a build sets it
    ],
)
def test_build_assemble_section_is_type_checked(tmp_path, capsys, assemble, expect):
    path = _build_yaml(tmp_path, assemble=assemble)
    assert build_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: " in err and expect in err, err
    assert "Traceback" not in err


def test_build_ingest_section_is_type_checked(tmp_path, capsys):
    path = _build_yaml(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["ingest"]["threads"] = "16"
    path.write_text(yaml.safe_dump(data))
    assert build_main(["--config", str(path)]) == 2
    assert "ingest.threads: must be an integer, got '16'" in capsys.readouterr().err


def test_good_assemble_section_is_kept(tmp_path):
    from pipeline.build import load_build_config

    path = _build_yaml(tmp_path, assemble={"batch_size": 10, "extra_abbreviations": ["Dr."]})
    cfg = load_build_config(path)
    assert cfg.assemble.batch_size == 10 and cfg.assemble.extra_abbreviations == ["Dr."]


@dataclasses.dataclass
class _Example:
    name: str
    count: int = 3
    ratio: float = 0.5
    tags: list[str] = dataclasses.field(default_factory=list)
    limit: int | None = None
    weights: list[float] | None = None


def test_loader_checks_every_annotation():
    ok = load_dataclass(_Example, {"name": "a", "ratio": 1, "limit": None, "weights": [1, 2.5]})
    assert ok == _Example("a", 3, 1.0, [], None, [1.0, 2.5])
    assert isinstance(ok.ratio, float) and isinstance(ok.weights[0], float)
    for data, expect in [
        ({"name": "a", "count": 2.0}, "x.count: must be an integer, got 2.0"),
        ({"name": "a", "count": True}, "x.count: must be an integer, got True"),
        ({"name": "a", "limit": "5"}, "x.limit: must be an integer (or null), got '5'"),
        ({"name": "a", "weights": ["1"]}, "x.weights: must be a list of numbers (or null)"),
        ({"count": 1}, "x.name: is required"),
        ({"name": "a", "cnt": 1}, "x: unknown field(s) ['cnt']; known: ['count', 'limit'"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_dataclass(_Example, data, "x")
        assert expect in str(info.value), (data, str(info.value))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_dataclass(_Example, ["name"], "x")
    assert check_value(None, int | None, "w") is None
    assert field_default(_Example, "tags") == [] and field_default(_Example, "count") == 3
