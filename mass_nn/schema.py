"""Strict conversion between typed dataclasses and JSON-ready dicts.

`from_dict` rejects unknown and missing fields and ill-typed values, naming the full key path, so a plans file
or properties JSON that was edited by hand fails with a message that says exactly what to fix.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union, get_args, get_origin, get_type_hints

from mass_nn.errors import PlansValidationError


def to_dict(obj) -> Any:
    """Recursively turn dataclasses (and tuples) into JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _fail(path: str, message: str, error_cls):
    raise error_cls(f"{path}: {message}")


def _convert(value, hint, path: str, error_cls):
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path, error_cls)
            except error_cls:
                continue
        _fail(path, f"value {value!r} matches none of {hint}", error_cls)
    if origin is typing.Literal:
        if value not in get_args(hint):
            _fail(path, f"must be one of {list(get_args(hint))}, got {value!r}", error_cls)
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path, error_cls)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            _fail(path, f"must be a list, got {type(value).__name__}", error_cls)
        args = get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                _fail(path, f"must have {len(args)} entries, got {len(value)}", error_cls)
            return tuple(_convert(v, a, f"{path}[{i}]", error_cls) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        converted = [_convert(v, item, f"{path}[{i}]", error_cls) for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if not isinstance(value, dict):
            _fail(path, f"must be an object, got {type(value).__name__}", error_cls)
        key_hint, value_hint = get_args(hint) or (Any, Any)
        return {_convert(k, key_hint, path, error_cls): _convert(v, value_hint, f"{path}.{k}", error_cls)
                for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(path, f"must be a number, got {value!r}", error_cls)
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, f"must be an integer, got {value!r}", error_cls)
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            _fail(path, f"must be {hint.__name__}, got {value!r}", error_cls)
        return value
    return value


def from_dict(cls, data, path: str | None = None, error_cls=PlansValidationError):
    """Build dataclass `cls` from `data`, failing on unknown, missing or ill-typed fields."""
    path = path or cls.__name__
    if not isinstance(data, dict):
        _fail(path, f"must be an object, got {type(data).__name__}", error_cls)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        _fail(path, f"unknown field(s) {unknown}; known fields: {sorted(fields)}", error_cls)
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            has_default = (field.default is not dataclasses.MISSING
                           or field.default_factory is not dataclasses.MISSING)
            if not has_default:
                _fail(path, f"missing field {name!r}", error_cls)
            continue
        kwargs[name] = _convert(data[name], hints[name], f"{path}.{name}", error_cls)
    return cls(**kwargs)
