"""Typed values <-> JSON, driven by the dataclasses' own type hints.

Results cross process and machine boundaries as JSON: a job's stored steps (resumed after a
crash), saved report contexts (goldens re-render from them), task results from workers. One
codec for all of them means a field added to a result type is stored and loaded everywhere
without a hand-written to_json/from_json pair drifting apart from the class.

Supported: frozen dataclasses (nested), Enums (by value), tuples (`tuple[X, ...]` and fixed
`tuple[X, Y]`), `dict[str, X]`, `X | None`, Path (as a string), datetime (ISO 8601),
str/int/float/bool. Loading is strict: an unknown or missing field, a wrong type or an unknown
enum value is an InputError naming where in the data it is, never a half-built value.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from bot.errors import InputError

T = TypeVar("T")


def dump(value: Any) -> Any:
    """A typed value as JSON-able data; the inverse of `load`."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {str(k): dump(v) for k, v in value.items()}
    return value


def load(tp: Any, data: Any, where: str = "data") -> Any:
    """`data` (from `dump`) as a value of type `tp`; InputError names what does not fit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None and len(args) < len(typing.get_args(tp)):
            return None
        if len(args) != 1:
            raise InputError(f"{where}: internal: unions of several types are not supported")
        return load(args[0], data, where)
    if origin is tuple:
        if not isinstance(data, list):
            raise InputError(f"{where}: expected a list, got {type(data).__name__}")
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(load(items[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if len(items) != len(data):
            raise InputError(f"{where}: expected {len(items)} items, got {len(data)}")
        return tuple(load(a, v, f"{where}[{i}]")
                     for i, (a, v) in enumerate(zip(items, data, strict=True)))
    if origin is dict:
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object, got {type(data).__name__}")
        _, vt = typing.get_args(tp)
        return {str(k): load(vt, v, f"{where}.{k}") for k, v in data.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError:
            choices = ", ".join(str(m.value) for m in tp)
            raise InputError(f"{where}: {data!r} is not one of {choices}") from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return load_dataclass(tp, data, where)
    if tp is Path and isinstance(data, str):
        return Path(data)
    if tp is datetime and isinstance(data, str):
        try:
            return datetime.fromisoformat(data)
        except ValueError:
            raise InputError(f"{where}: {data!r} is not an ISO 8601 time") from None
    if tp is float and isinstance(data, int | float) and not isinstance(data, bool):
        return float(data)
    if tp in (int, str, bool) and type(data) is tp:
        return data
    if tp is Any:
        return data
    raise InputError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {data!r}"[:300])


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    """A class's resolved field types, once: resolving them was two thirds of a load (the web
    series page loads ~50 stored TestRuns per view; bench/web.py)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def load_dataclass(
    cls: type[T], data: Any, where: str = "data", *, ignore: tuple[str, ...] = ()
) -> T:
    """One dataclass from an object; keys in `ignore` (e.g. a "kind" tag) are skipped."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected an object, got {type(data).__name__}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ignore and key not in fields:
            continue
        if key not in fields:
            raise InputError(f"{where}: unknown field {key!r} (known: {', '.join(fields)})")
        kwargs[key] = load(hints[key], value, f"{where}.{key}")
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and (
            f.default_factory is dataclasses.MISSING
        ):
            raise InputError(f"{where}: missing field {name!r}")
    return cls(**kwargs)
