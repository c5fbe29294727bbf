"""Checkpoint specs → model configs and loaded models, for the runner.

A spec is a path to a checkpoint (any format :mod:`harness.model.checkpoints` reads) or
``random:<size>`` for seeded random weights of a named size (``MODEL_SIZES``).
Random specs have no family of their own: they take the family of the sampler that uses them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.model.config import MODEL_SIZES, DiTConfig

if TYPE_CHECKING:
    from harness.model.network import DiT

RANDOM_PREFIX = "random:"


def is_random(path: str) -> bool:
    """Whether ``path`` is a ``random:<size>`` spec."""
    return path.startswith(RANDOM_PREFIX)


def random_config(
    size: str, family: str, vocab_size: int, overrides: dict[str, Any] | None = None
) -> DiTConfig:
    """The :class:`DiTConfig` of ``random:<size>`` for ``family``.

    Raises:
        ValueError: unknown size (with did-you-mean) or an invalid resulting config.
    """
    from harness.model import checkpoints

    if size not in MODEL_SIZES:
        raise ValueError(MODEL_SIZES.unknown_message(size))
    ids = {k: v for k, v in checkpoints.random_special_ids(vocab_size).items() if k != "tokenizer"}
    cfg = DiTConfig.from_size(
        size, family=family, vocab_size=vocab_size, **{**ids, **(overrides or {})}
    )
    cfg.check()
    return cfg


def _loader() -> Any:
    """The checkpoint loader: ``load_checkpoint`` (every format) where present, else ours."""
    from harness.model import checkpoints

    return checkpoints.load_checkpoint


def peek_config(path: str) -> DiTConfig:
    """The model config of the checkpoint at ``path`` without loading weights where possible.

    Our format keeps it in ``config.json``; other formats are loaded on the CPU.

    Raises:
        ValueError: the checkpoint cannot be read (message from the loader).
    """
    cfg_file = Path(path) / "config.json"
    if cfg_file.is_file():
        doc = json.loads(cfg_file.read_text())
        if isinstance(doc, dict) and "dlmbench_format" in doc:
            return DiTConfig.from_dict(doc["model"])
    return _loader()(path).config


def size_name(cfg: DiTConfig) -> str:
    """The :data:`MODEL_SIZES` name whose dimensions ``cfg`` has, or ``d<d>xN<N>``."""
    dims = ("hidden_size", "n_blocks", "n_heads", "cond_dim")
    for name in MODEL_SIZES.names():
        entry = MODEL_SIZES.get(name)
        if all(getattr(cfg, k) == entry[k] for k in dims):
            return name
    return f"d{cfg.hidden_size}xN{cfg.n_blocks}"


def load_model(
    path: str, cfg: DiTConfig, init_seed: int, device: str
) -> tuple[DiT, dict[str, Any]]:
    """Build (random) or load (path) the network, on ``device``, eval mode, frozen conditioning.

    Args:
        path: the checkpoint path or ``random:<size>`` spec.
        cfg: its resolved config (from :func:`random_config` or :func:`peek_config`).
        init_seed: weight seed for random specs.
        device: target device.

    Returns:
        The model and its provenance (source, format, SHA-256 where known).
    """
    from harness.model.network import DiT, deterministic_init

    if is_random(path):
        model = deterministic_init(DiT(cfg), seed=init_seed)
        prov: dict[str, Any] = {"source": path, "format": "random", "init_seed": init_seed}
    else:
        loaded = _loader()(path)
        model, prov = loaded.model, dict(loaded.provenance)
    model = model.to(device).eval().freeze_conditioning()
    return model, prov
