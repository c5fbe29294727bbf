"""Frozen dataclass ⇄ plain dict (YAML) with type checks that report every problem at once.

Every configurable object in dlmbench is a frozen dataclass; YAML repeats it field for field.
:func:`from_dict` checks keys (with did-you-mean) and types against the annotations and collects
all problems before raising one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from dlmcore.errors import UserError
from dlmcore.registry import did_you_mean

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """One or more configuration problems; ``problems`` holds each as a sentence."""

    def __init__(self, problems: list[str], header: str = "Invalid configuration") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{header} ({len(self.problems)} problem(s)):\n{lines}")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) in (list, tuple):
        args = get_args(tp)
        inner = _type_name(args[0]) if args else "any"
        return f"list of {inner}"
    if get_origin(tp) is dict:
        args = get_args(tp)
        return f"mapping of {_type_name(args[1])}" if len(args) == 2 else "mapping"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check ``value`` against annotation ``tp``; return it (lists become tuples for tuples).

    Appends a sentence to ``problems`` on mismatch and returns the value unchanged.
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            hint = did_you_mean(str(value), [str(a) for a in get_args(tp)])
            problems.append(f"'{where}' is {value!r}; allowed: {allowed}.{hint}")
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            trial: list[str] = []
            out = coerce(value, arg, where, trial)
            if not trial:
                return out
        problems.append(
            f"'{where}' is {value!r} ({type(value).__name__}); expected {_type_name(tp)}."
        )
        return value
    if tp is type(None):
        if value is not None:
            problems.append(f"'{where}' must be null, got {value!r}.")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            problems.append(f"'{where}' is {value!r}; expected {_type_name(tp)}.")
            return value
        args = [a for a in get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        out = [coerce(v, inner, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"'{where}' is {value!r}; expected a mapping.")
            return value
        args = get_args(tp)
        if len(args) != 2:
            return value
        out_map = {}
        for k, v in value.items():
            coerce(k, args[0], f"{where} key {k!r}", problems)
            out_map[k] = coerce(v, args[1], f"{where}.{k}", problems)
        return out_map
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"'{where}' is {value!r}; expected a mapping of {tp.__name__} fields.")
            return value
        obj, sub = _build(tp, value, where)
        problems.extend(sub)
        return obj
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"'{where}' is {value!r} ({type(value).__name__}); expected a number.")
            return value
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            problems.append(
                f"'{where}' is {value!r} ({type(value).__name__}); expected an integer."
            )
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"'{where}' is {value!r}; expected true or false.")
        return value
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"'{where}' is {value!r} ({type(value).__name__}); expected a string.")
        return value
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str) -> tuple[T | None, list[str]]:
    problems: list[str] = []
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            problems.append(
                f"unknown key '{where}'.{did_you_mean(key, names)} Allowed: {', '.join(names)}."
            )
    n_unknown = len(problems)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name not in data:
            no_default = (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
            if f.init and no_default:
                where = f"{prefix}.{f.name}" if prefix else f.name
                problems.append(f"missing required key '{where}' ({_type_name(hints[f.name])}).")
            continue
        where = f"{prefix}.{f.name}" if prefix else f.name
        kwargs[f.name] = coerce(data[f.name], hints[f.name], where, problems)
    if len(problems) > n_unknown:
        return None, problems
    # Only unknown keys so far: still run the value checks on the known ones, so that every
    # problem is reported at once; the object is withheld because the input was not clean.
    obj = cls(**kwargs)
    check = getattr(obj, "problems", None)
    if callable(check):
        problems.extend(f"{prefix + ': ' if prefix else ''}{p}" for p in check())
    return (None if n_unknown else obj), problems


def collect(
    cls: type[T], data: dict[str, Any] | None, prefix: str = ""
) -> tuple[T | None, list[str]]:
    """Build ``cls`` from ``data`` and return ``(object or None, problems)`` without raising."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, [f"'{prefix or cls.__name__}' must be a mapping, got {data!r}."]
    return _build(cls, data, prefix)


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build ``cls`` from ``data``, raising one :class:`ConfigError` listing every problem.

    The dataclass may define ``problems() -> list[str]`` for value checks (ranges, combinations).
    """
    obj, problems = collect(cls, data, prefix)
    if problems or obj is None:
        raise ConfigError(
            problems, f"Invalid {cls.__name__}" + (f" at '{prefix}'" if prefix else "")
        )
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass → plain dict (tuples become lists, so YAML round-trips)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def parse_scalar(text: str) -> Any:
    """Parse a CLI override value (``a.b=value``) with YAML scalar rules (safe loader)."""
    import yaml

    return yaml.safe_load(text)


def field_table(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of each field, for ``dlmbench ls``."""
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "<required>"
        out.append((f.name, _type_name(hints[f.name]), default))
    return out


__all__ = [
    "ConfigError",
    "coerce",
    "collect",
    "field_table",
    "from_dict",
    "parse_scalar",
    "to_dict",
    "typing",
]
