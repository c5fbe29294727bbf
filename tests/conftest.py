"""Shared fixtures: deterministic, non-zero tiny models in fp32 on CPU."""

from __future__ import annotations

import os

import pytest
import torch

# No test may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from harness.model.network import DiT, DiTConfig, deterministic_init  # noqa: E402

TINY = dict(vocab_size=33, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=8, model_length=16)


def tiny_model(family: str = "mdlm", seed: int = 0, **overrides) -> DiT:
    """A tiny DiT with seeded non-zero weights, eval mode, frozen conditioning."""
    cfg = DiTConfig(family=family, **{**TINY, **overrides})
    model = deterministic_init(DiT(cfg), seed=seed).eval()
    return model.freeze_conditioning()


@pytest.fixture(autouse=True, scope="session")
def _isolated_measurement_cache(tmp_path_factory):
    """Cost-model tables and calibrations measured by tests (on a busy machine, at test shapes)
    go to a session folder, never into the user's ``~/.cache/dlmbench``; cell subprocesses
    inherit the variable."""
    old = os.environ.get("DLMBENCH_CACHE_DIR")
    os.environ["DLMBENCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("dlmbench-cache"))
    yield
    if old is None:
        os.environ.pop("DLMBENCH_CACHE_DIR", None)
    else:
        os.environ["DLMBENCH_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _torch_defaults():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


@pytest.fixture
def make_tiny():
    return tiny_model
