"""Torch on first use, so that listing samplers (``dlmbench ls``) does not pay for ``import torch``.

Each sampler module binds ``torch = lazy_torch(globals())``. Until torch is needed, that name holds
a stand-in whose first attribute access imports torch and rebinds the module's global ``torch``
to the real module, so every later access is the plain module lookup (no per-call overhead in
timed code). Where torch is already imported, the real module is bound at once.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class LazyTorch:
    """The ``torch`` name of one module until its first use."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self._namespace = namespace

    def __getattr__(self, name: str) -> Any:
        import torch

        self._namespace["torch"] = torch
        return getattr(torch, name)


def lazy_torch(namespace: dict[str, Any]) -> Any:
    """The real ``torch`` if it is imported already, else a :class:`LazyTorch` for ``namespace``."""
    return sys.modules.get("torch") or LazyTorch(namespace)


def no_grad(fn: F) -> F:
    """``@torch.no_grad()`` without importing torch when the decorated class is defined."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]
