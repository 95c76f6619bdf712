"""Typed config dataclasses to and from JSON, checked: the one way configs enter checkpoints."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar


class JsonConfig:
    """``to_dict`` / ``from_dict`` for a config dataclass; ``config_name`` says where an error is."""

    config_name: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any):
        """Inverse of :meth:`to_dict`; unknown keys or wrong types raise ValueError, missing keys
        take their defaults (so older config files keep loading)."""
        return dataclass_from_dict(cls, data, cls.config_name)


def dataclass_from_dict(cls, data: Any, where: str):
    """Build dataclass ``cls`` from JSON data, checking keys and types (nested dataclasses,
    bool/int/float/str, optional values, lists and JSON objects); missing keys take defaults."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {item.name for item in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; {cls.__name__} has {sorted(known)}")
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, f"{where}.{name}")
    return cls(**values)


def _convert(hint, value: Any, where: str):
    if dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, where)
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{where} must not be null")
    for option in options:
        origin = typing.get_origin(option) or option
        if origin in (list, tuple) and isinstance(value, (list, tuple)):
            item_hint = (typing.get_args(option) or (Any,))[0]
            return origin(
                value
                if item_hint is Any
                else [_convert(item_hint, item, f"{where}[{index}]") for index, item in enumerate(value)]
            )
        if origin is dict and isinstance(value, Mapping):
            return dict(value)
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
    names = " or ".join(getattr(option, "__name__", str(option)) for option in options)
    raise ValueError(f"{where} must be {names}, got {value!r}")
