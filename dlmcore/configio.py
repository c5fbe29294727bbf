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

from dlmcore.errors import ConfigError, short_repr
from dlmcore.registry import did_you_mean

T = TypeVar("T")


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


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Every integer a config accepts fits in int64, so that whatever validates can be stored."""

MAX_KEY_CHARS = 60
"""The longest user key that a message's ``'a.b.key'`` path quotes in full."""


def key_text(key: Any, limit: int = MAX_KEY_CHARS) -> str:
    """A user's key or name as a message quotes it: verbatim up to ``limit`` characters.

    Longer ones, and non-strings, go through :func:`~dlmcore.errors.short_repr`.
    """
    if isinstance(key, str) and len(key) <= limit:
        return key
    return short_repr(key, limit)


def coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check ``value`` against annotation ``tp``; return it (lists become tuples for tuples).

    Integers must fit in int64, and a float is never taken for an integer (``1.0e+30`` is not a
    length). Appends a sentence to ``problems`` on mismatch and returns the value unchanged;
    messages quote the value through :func:`~dlmcore.errors.short_repr`.
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        return _coerce_literal(value, tp, where, problems)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, where, problems)
    if origin in (list, tuple):
        return _coerce_list(value, tp, where, problems)
    if origin is dict:
        return _coerce_dict(value, tp, where, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(
                f"'{where}' is {short_repr(value)}; expected a mapping of {tp.__name__} fields."
            )
            return value
        obj, sub = _build(tp, value, where)
        problems.extend(sub)
        return obj
    return _coerce_scalar(value, tp, where, problems)


def _coerce_literal(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    if value not in get_args(tp):
        allowed = ", ".join(repr(a) for a in get_args(tp))
        hint = did_you_mean(value, [str(a) for a in get_args(tp)]) if isinstance(value, str) else ""
        problems.append(f"'{where}' is {short_repr(value)}; allowed: {allowed}.{hint}")
    return value


def _coerce_union(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    for arg in get_args(tp):
        trial: list[str] = []
        out = coerce(value, arg, where, trial)
        if not trial:
            return out
    if isinstance(value, int) and not isinstance(value, bool) and int in get_args(tp):
        coerce(value, int, where, problems)  # the range message says more than the union's
        return value
    problems.append(
        f"'{where}' is {short_repr(value)} ({type(value).__name__}); expected {_type_name(tp)}."
    )
    return value


def _coerce_list(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(value, list | tuple):
        problems.append(f"'{where}' is {short_repr(value)}; expected {_type_name(tp)}.")
        return value
    args = [a for a in get_args(tp) if a is not Ellipsis]
    inner = args[0] if args else Any
    out = [coerce(v, inner, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    return tuple(out) if get_origin(tp) is tuple else out


def _coerce_dict(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(value, dict):
        problems.append(f"'{where}' is {short_repr(value)}; expected a mapping.")
        return value
    args = get_args(tp)
    if len(args) != 2:
        return value
    out_map = {}
    for k, v in value.items():
        coerce(k, args[0], f"{where} key {short_repr(k, MAX_KEY_CHARS)}", problems)
        out_map[k] = coerce(v, args[1], f"{where}.{key_text(k)}", problems)
    return out_map


def _coerce_scalar(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    got = f"'{where}' is {short_repr(value)} ({type(value).__name__})"
    if tp is type(None):
        if value is not None:
            problems.append(f"'{where}' must be null, got {short_repr(value)}.")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{got}; expected a number.")
            return value
        return float(value)
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{got}; expected an integer (write it without a decimal point).")
        elif not INT64_MIN <= value <= INT64_MAX:
            problems.append(
                f"'{where}' is {short_repr(value)}; integers must fit in int64 "
                f"({INT64_MIN} … {INT64_MAX}) to be stored. Use a smaller value."
            )
    elif tp is bool:
        if not isinstance(value, bool):
            problems.append(f"'{where}' is {short_repr(value)}; expected true or false.")
    elif tp is str:
        if not isinstance(value, str):
            problems.append(f"{got}; expected a string.")
    return value


def _build(cls: type[T], data: dict[str, Any], prefix: str) -> tuple[T | None, list[str]]:
    problems: list[str] = []
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            where = f"{prefix}.{key_text(key)}" if prefix else key_text(key)
            hint = did_you_mean(key, names) if isinstance(key, str) else ""
            problems.append(f"unknown key '{where}'.{hint} Allowed: {', '.join(names)}.")
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
        return None, [f"'{prefix or cls.__name__}' must be a mapping, got {short_repr(data)}."]
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
    """Parse a CLI override value (``a.b=value``) with YAML scalar rules (bounded safe loader).

    Raises:
        ConfigError: the text is not valid YAML or exceeds :mod:`dlmcore.yamlio`'s bounds.
    """
    from dlmcore.yamlio import load_yaml_text

    return load_yaml_text(text, "override value")


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
    "key_text",
    "parse_scalar",
    "to_dict",
    "typing",
]
