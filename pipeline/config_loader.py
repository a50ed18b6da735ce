"""The one config loader: a YAML mapping in, a dataclass out, every field's type checked.

Every config and config section of longcap (the recaption config and its models, build.yaml's
`ingest` and `assemble`, `longcap train --config train.yaml`) is a dataclass and is read by
`load_dataclass`: the annotations are the schema, so a field added to a dataclass is read,
type-checked and documented with no second list to keep in step. Errors name the file, the field,
what was expected and what was found (`run.yaml: models[1].max_tokens: must be an integer, got
'many'`); unknown keys are refused with the list of known ones. Range checks (>= 1, a known
name) stay with each dataclass, which knows what its values mean.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config that cannot run; the message names the file and the field."""


def config_error(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}" if where else msg)


def describe(typ: Any) -> str:
    """What a value of an annotation looks like, in words for an error message."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        kinds = [describe(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" (or null)" if type(None) in args else "")
    if origin is list:
        inner = {
            str: "non-empty strings",
            int: "integers",
            float: "numbers",
            bool: "true/false values",
        }.get(args[0] if args else Any, "values")
        return f"a list of {inner}"
    if origin is dict or typ is dict:
        return "a mapping"
    return {
        str: "a non-empty string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
    }.get(typ, getattr(typ, "__name__", str(typ)))


def check_value(value: Any, typ: Any, where: str) -> Any:
    """`value` if it fits the annotation `typ` (ints widened to floats), else ConfigError.

    Strict on purpose: YAML's `"10"` is not an integer, `true` is not 1 and `16.0` is not an
    integer, because each is usually a mistake the user wants to hear about."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if typ is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return check_value(value, option, where)
            except ConfigError:
                continue
        raise config_error(where, f"must be {describe(typ)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise config_error(where, f"must be {describe(typ)}, got {value!r}")
        inner = args[0] if args else Any
        try:
            return [check_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        except ConfigError:
            raise config_error(where, f"must be {describe(typ)}, got {value!r}") from None
    if origin is dict or typ is dict:
        if not isinstance(value, dict):
            raise config_error(where, f"must be a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(typ):
        return load_dataclass(typ, value, where)
    ok = {
        str: lambda v: isinstance(v, str) and bool(v.strip()),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        bool: lambda v: isinstance(v, bool),
    }
    if typ not in ok:
        raise TypeError(f"config loader: field type {typ!r} at {where} is not supported")
    if not ok[typ](value):
        raise config_error(where, f"must be {describe(typ)}, got {value!r}")
    return float(value) if typ is float else value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The evaluated annotations of a dataclass (PEP 563 strings), once per class."""
    return typing.get_type_hints(cls)


def field_default(cls: type, name: str) -> Any:
    """The default of one dataclass field (MISSING when it has none): CLIs take their defaults
    from here, so a default is written once."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def load_dataclass(
    cls: type,
    data: Any,
    where: str = "",
    skip: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
):
    """`cls(**data)` after checking every field: unknown keys (listing the known ones), missing
    required ones and each value's type against its annotation. Fields in `skip` are passed as
    they are, for the caller to check; fields in `exclude` may not be set here (the caller sets
    them) and count as unknown. Errors name `where.field`."""
    if not isinstance(data, dict):
        raise config_error(where, f"must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in exclude}
    hints = _type_hints(cls)
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise config_error(where, f"unknown field(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        at = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise config_error(at, "is required")
            continue
        kwargs[name] = data[name] if name in skip else check_value(data[name], hints[name], at)
    return cls(**kwargs)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; ConfigError naming the file otherwise."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the config ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return data
