"""Load an ``hf:`` model from its local directory and wrap it in its adapter.

Every ``from_pretrained`` call passes ``local_files_only=True``; remote code runs only with
``trust_remote_code: true`` in the spec (checked again here, not only in validation). The
loaded model's output head is checked against the config's ``vocab_size``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.model.hf.adapters import ADAPTERS
from harness.model.hf.config import HFModelConfig, read_config
from harness.model.hf.spec import AUTO_CLASSES, HFModelError, HFSpec, parse_spec, read_json


def transformers_module() -> Any:
    """``transformers``, or a clear error naming the extra to install."""
    try:
        import transformers
    except ImportError:
        raise HFModelError(
            "hf: models need the transformers package: pip install 'dlmbench[hf]'."
        ) from None
    transformers.utils.logging.disable_progress_bar()  # one "Loading weights" bar per cell
    return transformers


def pretrained_kwargs(spec: HFSpec, device: str) -> dict[str, Any]:
    """Keyword arguments every ``from_pretrained`` gets: local files only, dtype, backend."""
    opts = spec.options
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": getattr(torch, opts.dtype)}
    if opts.attn_implementation is not None:
        kwargs["attn_implementation"] = opts.attn_implementation
    if device != "cpu" and importlib.util.find_spec("accelerate") is not None:
        kwargs["device_map"] = device  # straight onto the GPU, without a CPU copy first
    return kwargs


def remote_auto_class(spec: HFSpec) -> str:
    """The ``auto_map`` class a remote-code checkpoint loads through (:data:`AUTO_CLASSES`)."""
    amap = read_json(Path(spec.directory).expanduser() / "config.json").get("auto_map") or {}
    for name in AUTO_CLASSES:
        if name in amap:
            return name
    raise HFModelError(
        f"'{spec.source}': config.json auto_map has none of {', '.join(AUTO_CLASSES)}."
    )


def load_hf_model(cfg: HFModelConfig, device: str = "cpu") -> nn.Module:
    """The bare transformers model of ``cfg``, from local files, on ``device``, eval mode.

    Raises:
        HFModelError: transformers missing or too old, or remote code without the opt-in.
    """
    tf = transformers_module()
    spec, directory = cfg.spec, str(Path(cfg.spec.directory).expanduser())
    kwargs = pretrained_kwargs(spec, device)
    if cfg.kind == "masked_lm":
        model = tf.AutoModelForMaskedLM.from_pretrained(directory, **kwargs)
    elif cfg.kind == "remote_code":
        if not spec.options.trust_remote_code:
            raise HFModelError(
                f"'{spec.source}' ships its own modeling code; set 'trust_remote_code: true' in "
                "its hf options to run it (read the code first)."
            )
        auto = getattr(tf, remote_auto_class(spec))
        model = auto.from_pretrained(directory, trust_remote_code=True, **kwargs)
    elif cfg.kind == "diffusion_gemma":
        if not hasattr(tf, "DiffusionGemmaForBlockDiffusion"):
            raise HFModelError(
                f"transformers {tf.__version__} has no DiffusionGemmaForBlockDiffusion; "
                "install a release that has it (5.25 or later)."
            )
        model = tf.DiffusionGemmaForBlockDiffusion.from_pretrained(directory, **kwargs)
    else:
        raise HFModelError(ADAPTERS.unknown_message(cfg.kind))
    if "device_map" not in kwargs:
        model = model.to(device)
    return model.eval().requires_grad_(False)


def head_width(model: nn.Module) -> int | None:
    """Rows of the model's output head (the logits' width), where it exposes one."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def load_adapter(cfg: HFModelConfig, device: str = "cpu") -> nn.Module:
    """The adapter of ``cfg`` (its kind's class in ``ADAPTERS``) around the loaded model.

    Raises:
        HFModelError: as :func:`load_hf_model`, or an output head whose width is not
            ``cfg.vocab_size``.
    """
    model = load_hf_model(cfg, device)
    width = head_width(model)
    if width is not None and width != cfg.vocab_size:
        raise HFModelError(
            f"'{cfg.spec.source}': the output head has {width} rows but config.json gives "
            f"vocab size {cfg.vocab_size}; the logits' width must match. Fix config.json "
            "('vocab_size' / 'embedding_size')."
        )
    return ADAPTERS.get(cfg.kind)(model, cfg)


def load(path: str, options: Mapping[str, Any] | None = None, device: str = "cpu") -> nn.Module:
    """``hf:<dir>`` + options → adapter on ``device`` (parse, check the directory, load).

    Raises:
        ConfigError: bad options or an incomplete directory (every problem).
        HFModelError: loading failed in a way the message explains.
    """
    return load_adapter(read_config(parse_spec(path, options)), device)


def provenance(cfg: HFModelConfig) -> dict[str, Any]:
    """Where the weights came from, for result rows (no hashing of multi-GB weights)."""
    root = Path(cfg.spec.directory).expanduser()
    cfg_bytes = (root / "config.json").read_bytes()
    return {
        "source": cfg.spec.source,
        "format": f"hf-{cfg.kind}",
        "model_type": cfg.model_type,
        "hub_id": cfg.spec.options.hub_id,
        "config_sha256": hashlib.sha256(cfg_bytes).hexdigest(),
        "sha256": None,
        "transformers": transformers_module().__version__,
    }
