"""A small generic name → object registry with duplicate checks and did-you-mean errors.

Instantiated for samplers, schedules, unmasking policies and model sizes. Registry names are the
stable values that appear in YAML configs and in result dataframes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from dlmcore.errors import UserError

T = TypeVar("T")


class RegistryError(UserError, KeyError):
    """Unknown or duplicate registry name. ``str()`` gives the plain message."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it verbatim.
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return `` Did you mean: x?`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=2, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class Registry(Generic[T]):
    """Maps short names to entries (classes or callables).

    Args:
        kind: what the entries are, used in messages ("sampler", "schedule", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its target under ``name``.

        Raises:
            RegistryError: if ``name`` is already registered to another target.
        """

        def wrap(target: T) -> T:
            self.add(name, target)
            return target

        return wrap

    def add(self, name: str, target: T) -> None:
        """Register ``target`` under ``name`` (non-decorator form).

        Raises:
            RegistryError: if ``name`` is already taken by a different target.
        """
        old = self._entries.get(name)
        if old is not None and old is not target:
            raise RegistryError(
                f"{self.kind} '{name}' is registered twice: {_qualname(old)} and "
                f"{_qualname(target)}. Pick another name for one of them."
            )
        self._entries[name] = target

    def remove(self, name: str) -> None:
        """Unregister ``name`` (used by tests that register temporary plugins)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """Look up ``name``.

        Raises:
            RegistryError: unknown name, with did-you-mean and the available names.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The error text for an unknown ``name``."""
        names = sorted(self._entries)
        return (
            f"Unknown {self.kind} '{name}'.{did_you_mean(name, names)} "
            f"Available: {', '.join(names)}."
        )

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Construct the entry registered as ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _qualname(obj: object) -> str:
    mod = getattr(obj, "__module__", "?")
    return f"{mod}.{getattr(obj, '__qualname__', repr(obj))}"
