"""Checkpoint I/O: our own format (safetensors + JSON config).

Our format is a directory holding

* ``config.json``: ``{"dlmbench_format": 1, "model": {DiTConfig fields}, ...}`` plus optional
  free-form sections (``training``, ``metrics``, ``provenance``);
* ``model.safetensors``: fp32 (or fp16, upcast on load) tensors named exactly as
  ``DiT.state_dict()`` (no prefix).

Public formats (HF directories, Lightning ``.ckpt``) load through the same entry point,
:func:`load_checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.network import DiT, DiTConfig

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded; the message names the file, key, expected and found."""


@dataclass
class LoadedModel:
    """A loaded network with where it came from.

    Attributes:
        model: the network in eval mode with frozen conditioning.
        config: its configuration.
        provenance: source path, format, file SHA-256, EMA used or not, and so on.
        extra: the free-form sections of our format (``training``, ``metrics``, …).
    """

    model: DiT
    config: DiTConfig
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    model: DiT,
    out_dir: str | os.PathLike[str],
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``model`` in our format to ``out_dir`` (atomically: temp dir, then rename).

    Args:
        model: the network.
        out_dir: target directory (replaced if it exists).
        extra: free-form JSON-serialisable sections to store beside the model config.
        dtype: storage dtype of the weights (fp32 default; fp16 halves the file, and
            :func:`load_dlmbench_checkpoint` upcasts to fp32 on load).

    Returns:
        The directory written.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    doc = {"dlmbench_format": FORMAT_VERSION, "model": model.config.to_dict(), **(extra or {})}
    (tmp / "config.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        out.rename(old)
        tmp.rename(out)
        for p in old.iterdir():
            p.unlink()
        old.rmdir()
    else:
        tmp.rename(out)
    return out


def load_dlmbench_checkpoint(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a directory in our format.

    Raises:
        CheckpointError: missing files, an invalid config, or keys/shapes that do not match.
    """
    from safetensors.torch import load_file

    d = Path(path)
    cfg_path, w_path = d / "config.json", d / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"{p}: file not found (a dlmbench checkpoint needs it).")
    doc = json.loads(cfg_path.read_text())
    try:
        cfg = DiTConfig.from_dict(doc["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{cfg_path}: invalid 'model' section: {e}") from None
    state = load_file(str(w_path))
    model = DiT(cfg)
    check_state_dict(model, state, str(w_path))
    model.load_state_dict(state)
    model.eval().freeze_conditioning()
    prov = {
        "source": str(d),
        "format": "dlmbench",
        "sha256": sha256_file(w_path),
        "family": cfg.family,
    }
    extra = {k: v for k, v in doc.items() if k not in ("model", "dlmbench_format")}
    return LoadedModel(model, cfg, prov, extra)


def check_state_dict(model: DiT, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict key and shape check, reporting missing, unexpected and mis-shaped keys together.

    Raises:
        CheckpointError: naming the file and every offending key with expected/found shapes.
    """
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = sorted(
        f"{k}: expected {list(want[k])}, found {list(state[k].shape)}"
        for k in set(want) & set(state)
        if tuple(state[k].shape) != want[k]
    )
    parts = []
    if missing:
        parts.append(f"missing keys {missing}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected}")
    if shapes:
        parts.append(f"shape mismatches [{'; '.join(shapes)}]")
    if parts:
        raise CheckpointError(f"{source}: " + "; ".join(parts) + ".")
