"""Checkpoint specs → model configs and loaded models, for the runner.

A spec is a path to a checkpoint (any format :mod:`harness.model.checkpoints` reads),
``random:<size>`` for seeded random weights of a named size (``MODEL_SIZES``), or
``hf:<local directory>`` for a Hugging Face diffusion LM behind an adapter
(:mod:`harness.model.hf`; options such as ``trust_remote_code`` come as a mapping, ``hf_options``).
Random specs have no family of their own: they take the family of the sampler that uses them.
torch and transformers are imported only when a model is built or loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.model.config import MODEL_SIZES, DiTConfig

if TYPE_CHECKING:
    from harness.model.hf.config import HFModelConfig

RANDOM_PREFIX = "random:"
HF_PREFIX = "hf:"


def is_random(path: str) -> bool:
    """Whether ``path`` is a ``random:<size>`` spec."""
    return path.startswith(RANDOM_PREFIX)


def is_hf(path: str) -> bool:
    """Whether ``path`` is an ``hf:<local directory>`` spec."""
    return isinstance(path, str) and path.startswith(HF_PREFIX)


def hf_problems(path: str, hf_options: Mapping[str, Any] | None = None) -> list[str]:
    """Every problem of an ``hf:`` spec and its options, without loading weights (torch-free).

    Covers the options (unknown keys with did-you-mean, types), the directory (missing, a file,
    a Hub id: each with the download command), config.json, the weights and every shard an index
    names, remote code without ``trust_remote_code: true``, and the mask id.
    """
    from harness.model.hf.config import problems_of

    return problems_of(path, hf_options)


def hf_config(path: str, hf_options: Mapping[str, Any] | None = None) -> HFModelConfig:
    """The :class:`~harness.model.hf.config.HFModelConfig` of an ``hf:`` spec (torch-free).

    Raises:
        ConfigError: every problem :func:`hf_problems` finds.
    """
    from harness.model.hf.config import read_config
    from harness.model.hf.spec import parse_spec

    return read_config(parse_spec(path, hf_options))


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


def peek_config(
    path: str, hf_options: Mapping[str, Any] | None = None
) -> DiTConfig | HFModelConfig:
    """The model config of the checkpoint at ``path`` without loading weights where possible.

    Our format keeps it in ``config.json``; ``hf:`` specs are read from their JSON files
    (:func:`hf_config`); other formats are loaded on the CPU.

    Raises:
        ValueError: the checkpoint cannot be read (message from the loader); for ``hf:`` specs a
            ``ConfigError`` listing every problem.
    """
    if is_hf(path):
        return hf_config(path, hf_options)
    cfg_file = Path(path) / "config.json"
    if cfg_file.is_file():
        doc = json.loads(cfg_file.read_text())
        if isinstance(doc, dict) and "dlmbench_format" in doc:
            return DiTConfig.from_dict(doc["model"])
    return _loader()(path).config


def size_name(cfg: DiTConfig | HFModelConfig) -> str:
    """The :data:`MODEL_SIZES` name whose dimensions ``cfg`` has, or ``d<d>xN<N>``.

    ``hf:`` models: ``hf-<model_type>-d<d>xN<N>``.
    """
    if callable(getattr(cfg, "size_name", None)):
        return cfg.size_name()
    dims = ("hidden_size", "n_blocks", "n_heads", "cond_dim")
    for name in MODEL_SIZES.names():
        entry = MODEL_SIZES.get(name)
        if all(getattr(cfg, k) == entry[k] for k in dims):
            return name
    return f"d{cfg.hidden_size}xN{cfg.n_blocks}"


def load_model(
    path: str, cfg: DiTConfig | HFModelConfig, init_seed: int, device: str
) -> tuple[Any, dict[str, Any]]:
    """Build (random) or load (path) the network, on ``device``, eval mode, frozen conditioning.

    Args:
        path: the checkpoint path, ``random:<size>`` or ``hf:<dir>`` spec.
        cfg: its resolved config (from :func:`random_config` or :func:`peek_config`); for
            ``hf:`` specs the :class:`HFModelConfig` carries the options the loader needs.
        init_seed: weight seed for random specs (unused otherwise).
        device: target device.

    Returns:
        The model (a DiT, or an HF adapter) and its provenance (source, format, SHA-256 where
        known).
    """
    if is_hf(path):
        return _load_hf(path, cfg, device)
    from harness.model.network import DiT, deterministic_init

    if is_random(path):
        model = deterministic_init(DiT(cfg), seed=init_seed)
        prov: dict[str, Any] = {"source": path, "format": "random", "init_seed": init_seed}
    else:
        loaded = _loader()(path)
        model, prov = loaded.model, dict(loaded.provenance)
    model = model.to(device).eval().freeze_conditioning()
    return model, prov


def _load_hf(path: str, cfg: Any, device: str) -> tuple[Any, dict[str, Any]]:
    """The adapter of an ``hf:`` spec whose config :func:`hf_config` resolved."""
    from harness.model.hf.config import HFModelConfig
    from harness.model.hf.load import load_adapter, provenance
    from harness.model.hf.spec import HFModelError

    if not isinstance(cfg, HFModelConfig) or cfg.spec.source != path:
        raise HFModelError(
            f"'{path}' needs the HFModelConfig that hf_config() read for it (it carries the hf "
            f"options); got {type(cfg).__name__}."
        )
    return load_adapter(cfg, device), provenance(cfg)
