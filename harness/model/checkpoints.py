"""Checkpoint I/O: every public format and our own, onto one network (``checkpoints.md``).

:func:`load_checkpoint` takes a **local path** (hub ids are provenance only; nothing is ever
downloaded) and dispatches on the layout:

* **dlmbench**: a directory whose ``config.json`` holds ``"dlmbench_format"`` and
  ``"model": {DiTConfig fields}``, plus ``model.safetensors`` with ``DiT.state_dict()`` names.
* **hf**: a Hugging Face directory, ``config.json`` + ``model.safetensors`` (preferred) or
  ``pytorch_model.bin``: kuleshov-group/mdlm-owt (``model_type: mdlm``, ``hidden_dim``),
  bd3lm-owt-block_size{4,8,16} (``bd3lm``, ``block_size``, top-level ``sampling_eps_min/max``
  tensors), sahoo-diffusion/Eso-LM-B-* (``EsoLM``, ``hidden_size`` plus a stray ``hidden_dim``,
  ``mask_index``), AR (no ``sigma_map``/``adaLN_modulation`` keys), DUO (``duo``,
  time-conditioned), and directories written by :func:`convert_lightning_checkpoint`.
* **lightning**: a ``.ckpt`` file that ``torch.load(weights_only=True)`` accepts. The weights are
  ``ema.shadow_params`` (a list in module-registration order, ``checkpoints.md`` §4) unless
  ``use_ema=False``. A file that needs arbitrary unpickling is refused with the one-off trusted
  conversion command ``dlmbench convert-ckpt SRC.ckpt OUT_DIR --trust-pickle``.

Public formats share one key map: strip ``backbone.`` and ``_orig_mod.``, drop ``teacher.*`` and
``sampling_eps_min/max``, recompute ``rotary_emb.inv_freq`` and compare. Sizes are read from the
config and cross-checked against the tensor shapes (the ``cond_dim`` 129-vs-128 trap), the vocab
includes the mask, and the mask id is V − 1 unless ``mask_index`` says otherwise.

:func:`resolve_model` accepts a path or ``random:<size>`` (seeded, non-zero random weights for
timing runs). Every failure is a one-line :class:`CheckpointError` naming the file, the key, the
expected and the found value, and what to do next.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dlmcore.errors import UserError
from dlmcore.registry import RegistryError, did_you_mean
from harness.model.network import FAMILIES, MODEL_SIZES, DiT, DiTConfig, deterministic_init

FORMAT_VERSION = 1

ACCEPTED_LAYOUTS = (
    "(1) a dlmbench directory: config.json with 'dlmbench_format' + model.safetensors; "
    "(2) a Hugging Face directory: config.json + model.safetensors or pytorch_model.bin; "
    "(3) a Lightning .ckpt file that loads with torch.load(weights_only=True) "
    "(otherwise convert it once: dlmbench convert-ckpt SRC.ckpt OUT_DIR --trust-pickle)"
)

# config.json model_type (lower case) / Lightning algo.name → source family.
_MODEL_TYPES = {"mdlm": "mdlm", "bd3lm": "bd3lm", "esolm": "esolm", "duo": "duo", "ar": "ar"}
_ALGO_NAMES = {**_MODEL_TYPES, "duo_base": "duo", "distillation": "duo"}
# Source family → (network family, model_type written by the converter).
_NETWORK_FAMILY = {"mdlm": "mdlm", "bd3lm": "bd3lm", "esolm": "esolm", "ar": "ar", "duo": "mdlm"}
_MODEL_TYPE_OUT = {"mdlm": "mdlm", "bd3lm": "bd3lm", "esolm": "EsoLM", "ar": "ar", "duo": "duo"}

# Tokenizers recognised by vocabulary size (checkpoints.md §2 trap 3, §5): V includes the mask.
_KNOWN_VOCABS = {
    50258: {"tokenizer": "gpt2", "mask_index": 50257, "bos_index": 50256, "eos_index": 50256},
    30522: {
        "tokenizer": "bert-base-uncased",
        "mask_index": 103,
        "bos_index": 101,
        "eos_index": 102,
    },
}

# Keys dropped from public state dicts (after prefix stripping): training buffers.
_IGNORED_KEYS = ("sampling_eps_min", "sampling_eps_max")
_INV_FREQ = "rotary_emb.inv_freq"

# config.json fields that are read; everything else is recorded as ignored.
_HF_READ = {
    "model_type", "hidden_size", "hidden_dim", "n_blocks", "n_heads", "cond_dim", "vocab_size",
    "mask_index", "model_length", "block_size", "time_conditioning", "dropout", "tokenizer",
    "bos_index", "eos_index", "source_sha256", "source_file", "ema",
}  # fmt: skip


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be loaded; the message names the file, key, expected and found."""


@dataclass
class LoadedModel:
    """A loaded network with where it came from.

    Attributes:
        model: the network in eval mode with frozen conditioning.
        config: its configuration.
        provenance: family, source path, format, file SHA-256, EMA used or not, dtype, the
            normalised config, and format-specific notes.
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


# ============================================================================================
# Entry points
# ============================================================================================


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    use_ema: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> LoadedModel:
    """Load any supported checkpoint from a local path into our :class:`DiT`.

    Args:
        path: a dlmbench or Hugging Face directory, or a Lightning ``.ckpt`` file.
        use_ema: Lightning only: evaluate ``ema.shadow_params`` (default) or, when false, the
            raw ``state_dict``. HF and dlmbench directories hold one set of weights.
        device: where to put the model (default CPU).
        dtype: parameter dtype (``torch.float32``, ``"bf16"``, …); default: keep fp32.

    Returns:
        The model (eval mode, frozen conditioning), its config and a provenance record.

    Raises:
        CheckpointError: missing file, unknown layout, missing/unexpected keys, shape
            mismatches, a config that disagrees with the weights, a pickle that is not
            weights-only, a wrong mask index, or a rotary buffer that differs from ours.
    """
    p = Path(path)
    layout = detect_layout(p)
    if layout == "dlmbench":
        return load_dlmbench_checkpoint(p, device=device, dtype=dtype)
    if layout == "hf":
        return _load_hf_dir(p, device=device, dtype=dtype)
    return _load_lightning(p, use_ema=use_ema, device=device, dtype=dtype)


def detect_layout(path: Path) -> str:
    """Classify ``path`` as ``dlmbench``, ``hf`` or ``lightning``.

    Raises:
        CheckpointError: the path does not exist or matches no accepted layout.
    """
    if not path.exists():
        hint = ""
        if not path.is_absolute() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
            hint = f" '{path}' looks like a hub id: download it once yourself and pass the folder."
        raise CheckpointError(
            f"{path}: no such file or directory. Nothing is downloaded: pass a local checkpoint "
            f"directory or .ckpt file (or random:<size> for random weights).{hint}"
        )
    if path.is_dir():
        cfg = path / "config.json"
        if cfg.is_file():
            return "dlmbench" if "dlmbench_format" in _read_json(cfg) else "hf"
        found = sorted(q.name for q in path.iterdir())[:8]
        raise CheckpointError(
            f"{path}: unknown checkpoint layout (a directory without config.json; found "
            f"{found}). Accepted layouts: {ACCEPTED_LAYOUTS}."
        )
    if path.suffix == ".ckpt":
        return "lightning"
    hint = ""
    if (path.parent / "config.json").is_file():
        hint = f" Did you mean the directory {path.parent}?"
    raise CheckpointError(
        f"{path}: unknown checkpoint layout (a '{path.suffix or path.name}' file).{hint} "
        f"Accepted layouts: {ACCEPTED_LAYOUTS}."
    )


def random_special_ids(vocab_size: int) -> dict[str, Any]:
    """Special ids of a random-weight model: a known tokenizer's, else BOS = EOS = V − 2.

    V − 2 is the last id before the mask, which is where GPT-2 + mask puts them (50 256 of
    50 258), so AR and BD3-LM samplers have a BOS to start from on any random model.
    """
    known = dict(_KNOWN_VOCABS.get(vocab_size, {}))
    if not known and vocab_size >= 2:
        known = {"bos_index": vocab_size - 2, "eos_index": vocab_size - 2}
    return known


def build_random_model(
    size: str,
    family: str,
    *,
    vocab_size: int,
    model_length: int,
    block_size: int | None = None,
    seed: int = 0,
) -> LoadedModel:
    """A network of a named size with seeded, non-zero random weights (timing runs).

    Args:
        size: a name in ``harness.model.network.MODEL_SIZES`` (``tiny``, ``cpu-s``, ``small``, …).
        family: ``mdlm``, ``bd3lm``, ``esolm`` or ``ar``.
        vocab_size: V, mask included (50 258 = GPT-2 + mask sets BOS = EOS = 50 256).
        model_length: training length recorded in the config (not a limit).
        block_size: BD3-LM block size L′.
        seed: seed of :func:`harness.model.network.deterministic_init`.

    Raises:
        CheckpointError: unknown size or family (with did-you-mean) or an invalid config.
    """
    try:
        sizes = MODEL_SIZES.get(size)
    except RegistryError as e:
        raise CheckpointError(f"random:{size}: {e} Use random:<size>.") from None
    if family not in FAMILIES:
        raise CheckpointError(
            f"random:{size}: unknown family '{family}'.{did_you_mean(family, FAMILIES)} "
            f"Allowed: {', '.join(FAMILIES)}."
        )
    known = {k: v for k, v in random_special_ids(vocab_size).items() if k != "mask_index"}
    cfg = _make_config(
        f"random:{size}",
        dict(
            family=family,
            vocab_size=vocab_size,
            model_length=model_length,
            block_size=block_size,
            **sizes,
            **known,
        ),
    )
    model = deterministic_init(DiT(cfg), seed=seed)
    prov = {"source": f"random:{size}", "format": "random", "sha256": None, "ema": False}
    prov["seed"] = seed
    return _finish(model, cfg, prov, device=None, dtype=None)


def resolve_model(
    spec: str,
    *,
    family: str,
    vocab_size: int = 50258,
    seq_len: int,
    block_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> LoadedModel:
    """Resolve a model spec: a local checkpoint path or ``random:<size>``.

    Args:
        spec: a path for :func:`load_checkpoint`, or ``random:<size>``.
        family: the family the experiment expects; a checkpoint of another family is an error.
        vocab_size: V for random models (mask included); a checkpoint brings its own.
        seq_len: L, recorded as ``model_length`` of random models (caches are sized by L).
        block_size: BD3-LM block size of random models.
        device: target device.
        dtype: parameter dtype.

    Raises:
        CheckpointError: anything :func:`load_checkpoint` or :func:`build_random_model`
            raises, or a checkpoint whose family differs from ``family``.
    """
    if spec.startswith("random:"):
        loaded = build_random_model(
            spec.split(":", 1)[1],
            family,
            vocab_size=vocab_size,
            model_length=seq_len,
            block_size=block_size,
        )
        if device is not None or dtype is not None:
            loaded = _finish(loaded.model, loaded.config, loaded.provenance, device, dtype)
        return loaded
    loaded = load_checkpoint(spec, device=device, dtype=dtype)
    if loaded.config.family != family:
        raise CheckpointError(
            f"{spec}: checkpoint family is '{loaded.config.family}' "
            f"(model_type {loaded.provenance.get('model_type')!r}), the experiment expects "
            f"'{family}'. Set family: {loaded.config.family}, or pass a {family} checkpoint."
        )
    return loaded


# ============================================================================================
# Our own format
# ============================================================================================


def save_checkpoint(
    model: DiT,
    out_dir: str | os.PathLike[str],
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
) -> Path:
    """Write ``model`` in our format to ``out_dir`` (atomically: temp dir, then rename).

    Args:
        model: the network.
        out_dir: target directory (replaced if it exists; callers that take user input check
            first, e.g. the training loop's ``--overwrite``).
        extra: free-form JSON-serialisable sections to store beside the model config.
        dtype: storage dtype of the weights (fp32 default; fp16 halves the file, and
            :func:`load_dlmbench_checkpoint` upcasts to fp32 on load).
        files: ``{name: path}`` of further files moved into the directory before it is
            renamed into place (e.g. ``train_log.csv``).

    Returns:
        The directory written.
    """
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        doc = {"dlmbench_format": FORMAT_VERSION, "model": model.config.to_dict(), **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
        for name, src in (files or {}).items():
            shutil.move(os.fspath(src), tmp / Path(name).name)

    return _write_dir_atomically(Path(out_dir), write)


def load_dlmbench_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> LoadedModel:
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
    doc = _read_json(cfg_path)
    try:
        cfg = DiTConfig.from_dict(doc["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{cfg_path}: invalid 'model' section: {_one_line(e)} Fix config.json."
        ) from None
    state = load_file(str(w_path))
    model = DiT(cfg)
    check_state_dict(model, state, str(w_path))
    model.load_state_dict(state)
    extra = {k: v for k, v in doc.items() if k not in ("model", "dlmbench_format")}
    prov = {
        "source": str(d),
        "format": "dlmbench",
        "weights_file": str(w_path),
        "sha256": sha256_file(w_path),
        "ema": (extra.get("provenance") or {}).get("ema"),
        "source_dtype": _tensor_dtype(state),
    }
    loaded = _finish(model, cfg, prov, device, dtype)
    loaded.extra = extra
    return loaded


def check_state_dict(model: DiT, state: Mapping[str, Tensor], source: str) -> None:
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
        c = model.config
        raise CheckpointError(
            f"{source}: " + "; ".join(parts) + f". Expected a complete {c.family} DiT "
            f"(V={c.vocab_size}, d={c.hidden_size}, N={c.n_blocks}, c_dim={c.cond_dim}); check "
            "that the file and its config belong together."
        )


# ============================================================================================
# Hugging Face directories
# ============================================================================================


def _load_hf_dir(
    d: Path, *, device: torch.device | str | None, dtype: torch.dtype | str | None
) -> LoadedModel:
    """Load an HF directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``)."""
    cfg_path = d / "config.json"
    raw = _read_json(cfg_path)
    w_path = _hf_weights_file(d)
    state_raw = _read_hf_weights(w_path)
    state, notes = normalise_state_dict(state_raw, str(w_path))
    fields_, read_notes = hf_fields(raw)
    notes.update(read_notes)
    where = f"{cfg_path} (weights {w_path.name})"
    cfg = config_from_fields(fields_, state, where, inv_freq=notes["inv_freq"])
    model = DiT(cfg)
    check_state_dict(model, state, str(w_path))
    check_inv_freq(model, notes.pop("inv_freq", None), str(w_path))
    model.load_state_dict(state)
    converted = "source_sha256" in raw
    prov = {
        "source": str(d),
        "format": "hf",
        "weights_file": str(w_path),
        "sha256": sha256_file(w_path),
        "ema": bool(raw.get("ema", True)),
        "ema_note": (
            "recorded by dlmbench convert-ckpt"
            if converted
            else "HF pushes copy the EMA weights in before upload (checkpoints.md §4; inferred)"
        ),
        "model_type": raw.get("model_type"),
        "source_dtype": _tensor_dtype(state_raw),
        **notes,
    }
    if converted:
        prov["converted_from"] = raw.get("source_file")
        prov["converted_from_sha256"] = raw["source_sha256"]
    return _finish(model, cfg, prov, device, dtype)


def _hf_weights_file(d: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (d / name).is_file():
            return d / name
    found = sorted(q.name for q in d.iterdir())[:8]
    raise CheckpointError(
        f"{d}: HF directory without weights: expected model.safetensors or pytorch_model.bin, "
        f"found {found}. Copy the weight file next to config.json (sharded weights are not "
        "supported)."
    )


def _read_hf_weights(w_path: Path) -> dict[str, Tensor]:
    if w_path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(w_path))
        except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
            raise CheckpointError(
                f"{w_path}: not a readable safetensors file ({_one_line(e)})."
            ) from None
    try:
        obj = torch.load(w_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{w_path}: not a weights-only pickle (torch.load(weights_only=True) refused it: "
            f"{_unpickle_reason(e)}); it is never unpickled fully. If you trust the file, re-save "
            f'it once as safetensors: python -c "import torch; from safetensors.torch import '
            f"save_file; save_file(torch.load('{w_path}', weights_only=False), "
            f"'{w_path.with_name('model.safetensors')}')\""
        ) from None
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{w_path}: expected a flat state dict of tensors, found {type(obj).__name__}."
        )
    return obj


def hf_fields(raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Normalise an HF ``config.json`` into our field names (``None`` = take from tensors).

    ``hidden_size``/``hidden_dim``: Eso-LM's class reads ``hidden_size`` (its push script wrote
    a stray ``hidden_dim``); the MDLM, BD3-LM and DUO classes read ``hidden_dim``.

    Returns:
        (fields, notes): the fields, and provenance notes (ignored config keys).
    """
    mt = raw.get("model_type")
    src_family = _MODEL_TYPES.get(str(mt).lower()) if mt is not None else None
    problems = []
    if mt is not None and src_family is None:
        problems.append(
            f"'model_type' is {mt!r}; accepted: ar, bd3lm, duo, EsoLM, mdlm "
            "(or leave it out to infer diffusion vs AR from the keys)"
        )
    prefer = (
        ("hidden_size", "hidden_dim") if src_family == "esolm" else ("hidden_dim", "hidden_size")
    )
    width_key = next((k for k in prefer if k in raw), prefer[0])
    out = {
        "source_family": src_family,
        "hidden_size": raw.get(width_key),
        "width_key": width_key,
        "n_blocks": raw.get("n_blocks"),
        "n_heads": raw.get("n_heads"),
        "cond_dim": raw.get("cond_dim"),
        "vocab_size": raw.get("vocab_size"),
        "mask_index": raw.get("mask_index"),
        "model_length": raw.get("model_length"),
        "block_size": raw.get("block_size") if src_family == "bd3lm" else None,
        "time_conditioning": src_family == "duo" or bool(raw.get("time_conditioning", False)),
        "dropout": raw.get("dropout"),
        "tokenizer": raw.get("tokenizer"),
        "bos_index": raw.get("bos_index"),
        "eos_index": raw.get("eos_index"),
        "problems": problems,
    }
    ignored = sorted((set(raw) - _HF_READ) | ({k for k in prefer if k in raw} - {width_key}))
    return out, {"ignored_config_keys": ignored}


# ============================================================================================
# Lightning .ckpt
# ============================================================================================


def _load_lightning(
    path: Path,
    *,
    use_ema: bool,
    device: torch.device | str | None,
    dtype: torch.dtype | str | None,
) -> LoadedModel:
    """Load a weights-only Lightning checkpoint (refusing anything that needs unpickling)."""
    ckpt = _torch_load_weights_only(path)
    model, state, notes = _lightning_network(ckpt, str(path))
    weights, ema_used = _select_weights(ckpt, model, state, use_ema, str(path))
    check_inv_freq(model, notes.pop("inv_freq", None), f"{path} state_dict")
    model.load_state_dict(weights)
    prov = {
        "source": str(path),
        "format": "lightning",
        "weights_file": str(path),
        "sha256": sha256_file(path),
        "ema": ema_used,
        "source_dtype": _tensor_dtype(weights),
        **notes,
    }
    if use_ema and not ema_used:
        prov["ema_note"] = "the file has no ema.shadow_params; used state_dict"
    return _finish(model, model.config, prov, device, dtype)


def _torch_load_weights_only(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        out = path.with_name(path.stem + "_converted")
        raise CheckpointError(
            f"{path}: not a weights-only checkpoint (torch.load(weights_only=True) refused it: "
            f"{_unpickle_reason(e)}). Lightning files pickle their config and tokenizer, and "
            f"untrusted pickles are never loaded. If you trust this file, convert it once with "
            f"`dlmbench convert-ckpt {path} {out} --trust-pickle` and load {out}."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"{path}: cannot be read as a torch checkpoint ({_one_line(e)}). "
            f"Accepted layouts: {ACCEPTED_LAYOUTS}."
        ) from None


def _lightning_network(
    ckpt: Any, source: str, overrides: Mapping[str, Any] | None = None
) -> tuple[DiT, dict[str, Tensor], dict[str, Any]]:
    """Build the DiT that ``ckpt['state_dict']`` describes; check its keys strictly."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{source}: key 'state_dict' missing; a Lightning checkpoint has 'state_dict' (and "
            f"usually 'ema', 'hyper_parameters'); found {found}."
        )
    state, notes = normalise_state_dict(ckpt["state_dict"], f"{source} state_dict")
    fields_ = lightning_fields(_plain(ckpt.get("hyper_parameters")))
    fields_.update(overrides or {})
    if fields_.get("source_family") == "duo":
        fields_["time_conditioning"] = True
    where = f"{source} (hyper_parameters vs state_dict)"
    cfg = config_from_fields(fields_, state, where, inv_freq=notes["inv_freq"])
    model = DiT(cfg)
    check_state_dict(model, state, f"{source} state_dict")
    notes["model_type"] = _MODEL_TYPE_OUT[fields_.get("source_family") or cfg.family]
    return model, state, notes


def lightning_fields(hp: Any) -> dict[str, Any]:
    """Normalise plain-dict Lightning ``hyper_parameters`` (``config.model``, ``config.algo``).

    Reads ``config.model.{hidden_size, n_blocks, n_heads, cond_dim, length, dropout}``,
    ``config.algo.{name, time_conditioning, causal_attention}``, ``config.block_size`` and
    ``config.data.tokenizer_name_or_path``; anything absent is taken from the tensors.
    ``time_conditioning`` is read from ``config.algo`` (bd3lms, Eso-LMs, DUO) and, when absent
    there, from the top level of ``config`` where kuleshov-group/mdlm keeps it.
    """
    hp = hp if isinstance(hp, dict) else {}
    cfg = hp.get("config") if isinstance(hp.get("config"), dict) else {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    algo = cfg.get("algo") if isinstance(cfg.get("algo"), dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    name = algo.get("name")
    src_family = _ALGO_NAMES.get(str(name).lower()) if name is not None else None
    problems = []
    if name is not None and src_family is None:
        problems.append(
            f"'hyper_parameters.config.algo.name' is {name!r}; accepted: "
            f"{', '.join(sorted(_ALGO_NAMES))}"
        )
    if src_family is None and algo.get("causal_attention") is True:
        src_family = "ar"
    width_key = "hidden_size" if "hidden_size" in model else "hidden_dim"
    return {
        "source_family": src_family,
        "hidden_size": model.get(width_key),
        "width_key": f"hyper_parameters.config.model.{width_key}",
        "n_blocks": model.get("n_blocks"),
        "n_heads": model.get("n_heads"),
        "cond_dim": model.get("cond_dim"),
        "vocab_size": None,
        "mask_index": hp.get("mask_index", model.get("mask_index")),
        "model_length": model.get("length"),
        "block_size": cfg.get("block_size", algo.get("block_size"))
        if src_family == "bd3lm"
        else None,
        "time_conditioning": src_family == "duo"
        or bool(algo.get("time_conditioning", cfg.get("time_conditioning", False))),
        "dropout": model.get("dropout"),
        "tokenizer": data.get("tokenizer_name_or_path"),
        "problems": problems,
    }


def _select_weights(
    ckpt: dict[str, Any], model: DiT, state: dict[str, Tensor], use_ema: bool, source: str
) -> tuple[dict[str, Tensor], bool]:
    """The EMA weights named in §4 order (default), or the raw ``state_dict``."""
    ema = ckpt.get("ema")
    shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    if not use_ema or shadow is None:
        return state, False
    return {**state, **ema_state_dict(model, shadow, source)}, True


def ema_state_dict(model: DiT, shadow: Any, source: str) -> dict[str, Tensor]:
    """Name ``ema.shadow_params`` by the network's parameter order and check every shape.

    The list holds the backbone's trainable parameters in module-registration order (130 for
    DiT diffusion, 100 for AR at DiT-small), which is also our :class:`DiT`'s order.

    Raises:
        CheckpointError: wrong count, or the first index whose shape differs (expected name,
            expected and found shapes).
    """
    named = list(model.named_parameters())
    if not isinstance(shadow, (list, tuple)):
        raise CheckpointError(
            f"{source}: 'ema.shadow_params' is a {type(shadow).__name__}; expected a list of "
            f"{len(named)} tensors."
        )
    if len(shadow) != len(named):
        raise CheckpointError(
            f"{source}: 'ema.shadow_params' has {len(shadow)} tensors; the {model.config.family} "
            f"network described by state_dict has {len(named)} parameters. The EMA does not "
            "belong to these weights; pass use_ema=False (--no-ema) to use state_dict."
        )
    out = {}
    for i, ((name, p), t) in enumerate(zip(named, shadow)):
        found = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
        if not isinstance(t, Tensor) or tuple(t.shape) != tuple(p.shape):
            raise CheckpointError(
                f"{source}: 'ema.shadow_params[{i}]' should be '{name}' with shape "
                f"{list(p.shape)}, found {found}. The EMA list does not follow the network's "
                "parameter order; pass use_ema=False (--no-ema) to use state_dict."
            )
        out[name] = t
    return out


# ============================================================================================
# Converting a pickled Lightning checkpoint (trusted, one-off)
# ============================================================================================


def convert_lightning_checkpoint(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    trust_pickle: bool,
    *,
    use_ema: bool = True,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a Lightning ``.ckpt`` once, in a trusted step, to ``config.json`` + safetensors.

    Fully unpickles ``src`` (only with ``trust_pickle=True``); classes whose modules are not
    installed (omegaconf, transformers tokenizers) are replaced by inert stubs whose state is
    still read for the config. Writes ``model.safetensors`` (fp32, ``backbone.``-prefixed) and a
    ``config.json`` with ``model_type``, ``hidden_size``, ``n_blocks``, ``n_heads``,
    ``cond_dim``, ``vocab_size``, ``mask_index``, ``model_length``, ``time_conditioning``,
    ``source_file``, ``source_sha256`` and ``ema`` (``checkpoints.md`` §6). BOS/EOS ids come
    from ``overrides``, else from the tokenizer pickled in ``hyper_parameters``
    (``bos_token_id``/``eos_token_id``), else from a known vocabulary (GPT-2, BERT).

    Args:
        src: the ``.ckpt`` file.
        out_dir: the directory to write; an existing non-empty one is refused unless
            ``overwrite``, and even then only when it holds a checkpoint (``config.json``).
            The new directory is written to a temp sibling and renamed into place.
        trust_pickle: must be true: the file can run code when unpickled.
        use_ema: write the EMA weights (default) or ``state_dict``.
        overrides: config fields the file lacks (``n_heads``, ``source_family``,
            ``mask_index``, ``block_size``, ``model_length``, ``bos_index``, ``eos_index``).
        overwrite: replace an existing checkpoint directory at ``out_dir``.

    Returns:
        The directory written; load it with :func:`load_checkpoint`.

    Raises:
        CheckpointError: ``trust_pickle`` false, a missing file, or any loading problem.
    """
    src = Path(src)
    if not trust_pickle:
        raise CheckpointError(
            f"{src}: converting unpickles the file, which can run arbitrary code; pass "
            "trust_pickle=True (--trust-pickle) only for a file you trust."
        )
    if not src.is_file():
        raise CheckpointError(f"{src}: no such file. Pass a local Lightning .ckpt file.")
    _check_destination(Path(out_dir), overwrite)
    ckpt = _torch_load_trusted(src)
    token_ids = _pickled_tokenizer_ids(
        ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    )
    model, state, notes = _lightning_network(ckpt, str(src), {**token_ids, **(overrides or {})})
    weights, ema_used = _select_weights(ckpt, model, state, use_ema, str(src))
    check_inv_freq(model, notes.pop("inv_freq", None), f"{src} state_dict")
    c = model.config
    doc = {
        "model_type": notes["model_type"],
        "hidden_size": c.hidden_size,
        "n_blocks": c.n_blocks,
        "n_heads": c.n_heads,
        "cond_dim": c.cond_dim,
        "vocab_size": c.vocab_size,
        "mask_index": c.mask_id,
        "model_length": c.model_length,
        "time_conditioning": c.time_conditioning,
        "block_size": c.block_size,
        "dropout": c.dropout,
        "tokenizer": c.tokenizer,
        "bos_index": c.bos_index,
        "eos_index": c.eos_index,
        "ema": ema_used,
        "source_file": src.name,
        "source_sha256": sha256_file(src),
    }
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        tensors = {
            f"backbone.{k}": v.detach().to("cpu", torch.float32).contiguous()
            for k, v in weights.items()
        }
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
        (tmp / "SOURCE.txt").write_text(f"{src.name}  sha256={doc['source_sha256']}\n")

    return _write_dir_atomically(Path(out_dir), write)


def _check_destination(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing non-empty ``out`` unless ``overwrite`` (and a checkpoint).

    Raises:
        CheckpointError: ``out`` exists and is not an empty directory, and either ``overwrite``
            is false or ``out`` does not hold a ``config.json`` (then it is never replaced).
    """
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    if not overwrite:
        raise CheckpointError(
            f"{out}: already exists and is not empty; pass --overwrite (overwrite=True) to "
            "replace it, or choose another output directory."
        )
    if out.is_symlink() or not out.is_dir() or not (out / "config.json").is_file():
        raise CheckpointError(
            f"{out}: exists and is not a checkpoint directory (no config.json); it is never "
            "replaced, even with --overwrite. Choose another output directory."
        )


def _pickled_tokenizer_ids(hp: Any) -> dict[str, int]:
    """``bos_index``/``eos_index`` from the tokenizer in (unpickled) ``hyper_parameters``.

    A real tokenizer object (its package is installed) answers ``bos_token_id`` and
    ``eos_token_id``; a stubbed one is read from its pickled state. Ids that are missing or
    not non-negative integers are left out (the known-vocabulary defaults then apply).
    """
    tok = None
    if isinstance(hp, Mapping):
        tok = hp.get("tokenizer")
    elif isinstance(hp, _Stub) and isinstance(hp._stub_state, dict):
        tok = hp._stub_state.get("tokenizer")
    if tok is None:
        return {}
    plain = _plain(tok) if isinstance(tok, _Stub) else None
    out = {}
    for ours, theirs in (("bos_index", "bos_token_id"), ("eos_index", "eos_token_id")):
        if isinstance(plain, dict):
            v = plain.get(theirs)
        else:
            try:
                v = getattr(tok, theirs, None)
            except Exception:  # noqa: BLE001 - a trusted but odd tokenizer object
                v = None
        if _is_int(v) and v >= 0:
            out[ours] = int(v)
    return out


class _Stub:
    """Inert stand-in for a class that cannot be imported while unpickling (trusted path)."""

    _stub_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._stub_args = args
        self._stub_state: Any = None

    def __setstate__(self, state: Any) -> None:
        self._stub_state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses append items
        if not isinstance(self._stub_state, dict):
            self._stub_state = {}
        self._stub_state[key] = value

    def append(self, value: Any) -> None:  # list subclasses append items
        self._stub_args = (*self._stub_args, value)

    def __repr__(self) -> str:
        return f"<stub {self._stub_name}>"


class _PermissiveUnpickler(pickle.Unpickler):
    """Full unpickling, except that unimportable classes become :class:`_Stub` subclasses."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Stub,), {"_stub_name": f"{module}.{name}"})


class _PermissivePickle:
    """A ``pickle_module`` for ``torch.load`` that stubs missing classes."""

    Unpickler = _PermissiveUnpickler
    __name__ = "dlmbench_permissive_pickle"

    @staticmethod
    def load(f: Any, **kw: Any) -> Any:
        return _PermissiveUnpickler(f, **kw).load()


def _torch_load_trusted(src: Path) -> Any:
    try:
        return torch.load(
            src, map_location="cpu", weights_only=False, pickle_module=_PermissivePickle
        )
    except Exception as e:  # noqa: BLE001 - the file is trusted but may still be corrupt
        raise CheckpointError(f"{src}: cannot be unpickled ({_one_line(e)}).") from None


def _plain(obj: Any, depth: int = 0) -> Any:
    """Plain Python data from a config object: dicts, mappings (OmegaConf), stubbed objects."""
    if depth > 30:
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Tensor):
        return obj.item() if obj.numel() == 1 else None
    if isinstance(obj, Mapping) or (hasattr(obj, "keys") and hasattr(obj, "__getitem__")):
        out = {}
        for k in list(obj.keys()):
            try:
                out[str(k)] = _plain(obj[k], depth + 1)
            except Exception:  # noqa: BLE001 - e.g. an OmegaConf interpolation of hydra state
                out[str(k)] = None
        return out
    if isinstance(obj, (list, tuple)):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, _Stub):
        state = obj._stub_state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = {**state[0], **(state[1] or {})}
        if isinstance(state, dict):
            for key in ("_content", "_val"):  # OmegaConf containers and value nodes
                if key in state:
                    return _plain(state[key], depth + 1)
            return {k: _plain(v, depth + 1) for k, v in state.items() if not k.startswith("_")}
        return None
    return None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``convert-ckpt SRC.ckpt OUT_DIR --trust-pickle`` to a CLI's subparsers."""
    p = subparsers.add_parser(
        "convert-ckpt",
        help="convert a (trusted) Lightning .ckpt once to config.json + model.safetensors",
        description=convert_lightning_checkpoint.__doc__.split("\n\n")[0],
    )
    p.add_argument("src", help="the Lightning .ckpt file")
    p.add_argument("out_dir", help="the directory to write")
    p.add_argument("--trust-pickle", action="store_true", help="required: the file is unpickled")
    p.add_argument("--no-ema", action="store_true", help="write state_dict instead of the EMA")
    p.add_argument("--family", choices=sorted(_NETWORK_FAMILY), help="if the file lacks algo.name")
    p.add_argument("--n-heads", type=int, help="if the file lacks config.model.n_heads")
    p.add_argument("--mask-index", type=int, help="mask id (default: V - 1 or the tokenizer's)")
    p.add_argument("--block-size", type=int, help="BD3-LM block size")
    p.add_argument("--model-length", type=int, help="training length L")
    p.add_argument(
        "--bos-index", type=int, help="BOS id (default: the pickled tokenizer's or the vocab's)"
    )
    p.add_argument(
        "--eos-index", type=int, help="EOS id (default: the pickled tokenizer's or the vocab's)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing checkpoint directory at OUT_DIR (refused otherwise)",
    )
    p.set_defaults(fn=_cmd_convert)
    return p


def _cmd_convert(args: argparse.Namespace) -> int:
    over = {
        "source_family": args.family,
        "n_heads": args.n_heads,
        "mask_index": args.mask_index,
        "block_size": args.block_size,
        "model_length": args.model_length,
        "bos_index": getattr(args, "bos_index", None),
        "eos_index": getattr(args, "eos_index", None),
    }
    over = {k: v for k, v in over.items() if v is not None}
    out = convert_lightning_checkpoint(
        args.src,
        args.out_dir,
        args.trust_pickle,
        use_ema=not args.no_ema,
        overrides=over,
        overwrite=bool(getattr(args, "overwrite", False)),
    )
    print(f"wrote {out} (config.json, model.safetensors); load it with load_checkpoint('{out}')")
    return 0


# ============================================================================================
# The shared key map and config cross-check
# ============================================================================================


def normalise_state_dict(
    state: Mapping[str, Any], source: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Map public keys onto our names.

    Strips every ``_orig_mod.`` segment and leading ``backbone.`` prefixes, drops ``teacher.*``
    (DUO distillation) and the top-level ``sampling_eps_min/max`` buffers, and pops
    ``rotary_emb.inv_freq`` (returned in the notes for :func:`check_inv_freq`).

    Returns:
        (state, notes): our state dict, and notes (``dropped_keys``, ``inv_freq``).
    """
    out: dict[str, Tensor] = {}
    dropped, inv = [], None
    for key, t in state.items():
        if not isinstance(t, Tensor):
            raise CheckpointError(
                f"{source}: key '{key}' holds a {type(t).__name__}, expected a tensor."
            )
        name = key.replace("_orig_mod.", "")
        if name.startswith("teacher."):
            dropped.append(key)
            continue
        while name.startswith("backbone."):
            name = name[len("backbone.") :]
        if name in _IGNORED_KEYS:
            dropped.append(key)
        elif name == _INV_FREQ:
            inv = t
        elif name in out:
            raise CheckpointError(f"{source}: two keys map onto '{name}' (one is '{key}').")
        else:
            out[name] = t
    return out, {"dropped_keys": sorted(dropped), "inv_freq": inv}


def tensor_sizes(state: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """Sizes implied by the tensors: V, d, head rows, c_dim (or ``None``), N, AdaLN or not.

    Raises:
        CheckpointError: the embedding is missing or not 2-D.
    """
    emb = state.get("vocab_embed.embedding")
    if emb is None or emb.ndim != 2:
        found = None if emb is None else list(emb.shape)
        raise CheckpointError(
            f"{source}: key 'vocab_embed.embedding' (after stripping 'backbone.') expected a "
            f"[V, d] tensor, found {found}. Is this a DiT checkpoint of MDLM/BD3-LM/Eso-LM/AR?"
        )
    sigma = state.get("sigma_map.mlp.0.weight")
    head = state.get("output_layer.linear.weight")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    return {
        "vocab_size": emb.shape[0],
        "hidden_size": emb.shape[1],
        "head_rows": None if head is None else head.shape[0],
        "cond_dim": None if sigma is None or sigma.ndim != 2 else sigma.shape[0],
        "n_blocks": max(blocks) + 1 if blocks else 0,
        "adaln": any("adaLN_modulation" in k or k.startswith("sigma_map.") for k in state),
    }


def config_from_fields(
    fields_: Mapping[str, Any],
    state: Mapping[str, Tensor],
    where: str,
    *,
    inv_freq: Tensor | None = None,
) -> DiTConfig:
    """Our :class:`DiTConfig` from normalised fields, cross-checked against the tensors.

    Every disagreement is collected and reported in one error, e.g. ``'cond_dim' is 129 but
    sigma_map.mlp.0.weight has shape [128, 256] (cond_dim 128)``.

    Raises:
        CheckpointError: config/tensor disagreements, a missing ``n_heads``, a wrong mask index.
    """
    sz = tensor_sizes(state, where)
    probs = list(fields_.get("problems", []))
    family = _network_family(fields_.get("source_family"), sz, probs)
    vals: dict[str, Any] = {"family": family}
    shape_of = {k: list(t.shape) for k, t in state.items()}
    checks = [
        ("hidden_size", fields_.get("width_key", "hidden_size"), "vocab_embed.embedding"),
        ("vocab_size", "vocab_size", "vocab_embed.embedding"),
        ("n_blocks", "n_blocks", None),
    ]
    if sz["adaln"]:
        checks.append(("cond_dim", "cond_dim", "sigma_map.mlp.0.weight"))
    for ours, theirs, key in checks:
        given, found = fields_.get(ours), sz[ours]
        vals[ours] = found
        if given is None:
            continue
        if not _is_int(given):
            probs.append(f"'{theirs}' is {given!r}; expected an integer")
        elif given != found:
            evidence = (
                f"{key} has shape {shape_of.get(key)} ({ours} {found})"
                if key
                else f"the weights have {found} blocks (blocks.0 … blocks.{found - 1})"
            )
            probs.append(f"'{theirs}' is {given} but {evidence}")
    if sz["n_blocks"] == 0:
        probs.append("the weights have no blocks.{i}.* keys; expected n_blocks transformer blocks")
    if sz["head_rows"] is not None and sz["head_rows"] != sz["vocab_size"]:
        probs.append(
            f"output_layer.linear.weight has {sz['head_rows']} rows but vocab_embed.embedding "
            f"has {sz['vocab_size']} (both must equal vocab_size, mask included)"
        )
    vals["cond_dim"] = vals.get("cond_dim") or _int_or(fields_.get("cond_dim"), 128)
    vals["n_heads"] = _heads(fields_.get("n_heads"), inv_freq, sz, probs)
    vals.update(_token_ids(fields_, sz["vocab_size"], probs))
    for k in ("model_length", "block_size", "dropout", "time_conditioning"):
        if fields_.get(k) is not None:
            vals[k] = fields_[k]
    if probs:
        raise CheckpointError(
            f"{where}: the config disagrees with the weights: " + "; ".join(probs) + ". Fix the "
            "config (or pass the missing value) so that it matches the tensors."
        )
    return _make_config(where, vals)


def _network_family(src_family: str | None, sz: Mapping[str, Any], probs: list[str]) -> str:
    """The network family; AR-ness is checked against the presence of AdaLN keys."""
    if src_family is None:
        return "mdlm" if sz["adaln"] else "ar"
    family = _NETWORK_FAMILY[src_family]
    if family == "ar" and sz["adaln"]:
        probs.append(
            "the family is 'ar' but the weights have sigma_map/adaLN_modulation keys (a diffusion "
            "DiT); expected none"
        )
    elif family != "ar" and not sz["adaln"]:
        probs.append(
            f"the family is '{src_family}' but the weights have no sigma_map/adaLN_modulation "
            "keys (an AR DiT); expected them"
        )
    return family


def _heads(given: Any, inv: Tensor | None, sz: Mapping[str, Any], probs: list[str]) -> int:
    """H from the config, checked against d and the rotary buffer (d_h / 2 entries) if stored."""
    d = sz["hidden_size"]
    from_inv = None
    if inv is not None and inv.ndim == 1 and inv.numel() and d % (2 * inv.numel()) == 0:
        from_inv = d // (2 * inv.numel())
    if given is None:
        if from_inv is None:
            probs.append(
                "'n_heads' is missing and there is no rotary_emb.inv_freq to infer it from "
                "(pass it, e.g. --n-heads for convert-ckpt, or add it to the config)"
            )
            return 1
        return from_inv
    if not _is_int(given) or given < 1 or d % given or (d // given) % 2:
        probs.append(f"'n_heads' is {given!r}; it must divide hidden_size {d} into even heads")
        return 1
    if inv is not None and from_inv != given:
        probs.append(
            f"'n_heads' is {given} but rotary_emb.inv_freq has {inv.numel()} entries "
            f"(head dim {2 * inv.numel()}, so n_heads {from_inv} for hidden_size {d})"
        )
    return int(given)


def _token_ids(fields_: Mapping[str, Any], V: int, probs: list[str]) -> dict[str, Any]:
    """Mask, BOS, EOS ids and tokenizer: explicit fields, else the known vocab, else V − 1."""
    known = _KNOWN_VOCABS.get(V, {})
    mask = fields_.get("mask_index")
    if mask is None:
        mask = known.get("mask_index", V - 1)
    elif not _is_int(mask) or not 0 <= mask < V:
        probs.append(
            f"'mask_index' is {mask!r}; it must lie in [0, {V - 1}] because vocab_size {V} "
            "includes the mask token (default V - 1)"
        )
        mask = V - 1
    elif known and mask != known["mask_index"]:
        probs.append(
            f"'mask_index' is {mask}; a vocabulary of {V} is {known['tokenizer']} whose mask id is "
            f"{known['mask_index']} (ids below it are real tokens)"
        )
    out = {"mask_index": mask if mask != V - 1 else None}
    for k in ("bos_index", "eos_index", "tokenizer"):
        v = fields_.get(k)
        if v is not None and k != "tokenizer" and (not _is_int(v) or not 0 <= v < V):
            probs.append(f"'{k}' is {v!r}; it must be a token id in [0, {V - 1}]")
            v = None
        out[k] = v if v is not None else known.get(k)
    return out


def check_inv_freq(model: DiT, inv: Tensor | None, source: str) -> None:
    """Compare a stored ``rotary_emb.inv_freq`` with ours (base 10 000, head dim d_h).

    Tolerance: relative 1e-5, or 2 ulp of the stored dtype (the reference computes
    ``1 / base**(2j/d_h)``, ours ``base**(-2j/d_h)``: they differ by about 1e-7).

    Raises:
        CheckpointError: a different length (head dim) or different values (rotary base).
    """
    if inv is None:
        return
    ours = model.rotary_emb.inv_freq.detach().cpu()
    if tuple(inv.shape) != tuple(ours.shape):
        c = model.config
        raise CheckpointError(
            f"{source}: key 'rotary_emb.inv_freq' has shape {list(inv.shape)}; expected "
            f"[{ours.numel()}] (head dim {c.head_dim} = hidden {c.hidden_size} / {c.n_heads} "
            "heads). Check 'n_heads'."
        )
    tol = max(1e-5, 2 * torch.finfo(inv.dtype).eps) if inv.is_floating_point() else 1e-5
    rel = (inv.double() - ours.double()).abs() / ours.double()  # (d_h/2,)
    bad = (~(rel <= tol)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise CheckpointError(
            f"{source}: key 'rotary_emb.inv_freq' differs from base-{model.config.rope_base:g} "
            f"rotary: first at index {i}, expected {ours[i].item():.6g}, found "
            f"{inv[i].item():.6g} (relative difference {rel[i].item():.2g} > {tol:.0e}). This "
            "network uses another rotary; the checkpoint cannot be loaded faithfully."
        )


# ============================================================================================
# Helpers
# ============================================================================================


def _make_config(source: str, vals: Mapping[str, Any]) -> DiTConfig:
    vals = {k: v for k, v in vals.items() if v is not None or k in ("block_size", "mask_index")}
    try:
        return DiTConfig.from_dict(dict(vals))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid network config: {_one_line(e)}") from None


def _finish(
    model: DiT,
    cfg: DiTConfig,
    prov: dict[str, Any],
    device: torch.device | str | None,
    dtype: torch.dtype | str | None,
) -> LoadedModel:
    """Move, switch to eval, precompute the σ = 0 conditioning, complete the provenance.

    A non-fp32 ``dtype`` is probed with a one-token forward, because a network that cannot run
    with such parameters should fail here, naming the alternative, not inside a timed run.
    """
    want = _as_dtype(dtype)
    if device is not None or want is not None:
        model = model.to(device=device, dtype=want)
    model.eval()
    try:
        model.freeze_conditioning()
        if want not in (None, torch.float32):
            with torch.inference_mode():
                model(
                    torch.zeros(1, 1, dtype=torch.long, device=model.vocab_embed.embedding.device)
                )
    except RuntimeError as e:
        raise CheckpointError(
            f"{prov.get('source')}: the network cannot run with {want} parameters "
            f"({_one_line(e)[:160]}). Load with dtype=None (fp32) and run under "
            f"torch.autocast(dtype={want}) instead."
        ) from None
    p = model.vocab_embed.embedding
    prov = {
        "family": cfg.family,
        **prov,
        "dtype": str(p.dtype).removeprefix("torch."),
        "device": str(p.device),
        "config": cfg.to_dict(),
    }
    return LoadedModel(model, cfg, prov)


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64,
}  # fmt: skip


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.")
    if key not in _DTYPES:
        raise CheckpointError(
            f"dtype '{dtype}' is not a float dtype.{did_you_mean(key, list(_DTYPES))} "
            f"Allowed: {', '.join(_DTYPES)}."
        )
    return _DTYPES[key]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({_one_line(e)}).") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(doc).__name__}.")
    return doc


def _write_dir_atomically(out: Path, write: Callable[[Path], None]) -> Path:
    """Write into a temp sibling directory, then rename it onto ``out`` (replacing it).

    The previous ``out`` is first renamed aside (put back if the second rename fails) and only
    then removed: the only tree ever deleted is what ``out`` itself was (a link or file at
    ``out`` is unlinked, never followed).
    """
    if out.name in ("", ".", ".."):
        raise CheckpointError(f"{out}: not a folder name to write a checkpoint to.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not (out.exists() or out.is_symlink()):
        tmp.rename(out)
        return out
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    old.rmdir()
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.is_symlink() or not old.is_dir():
        old.unlink()
    else:
        shutil.rmtree(old)
    return out


def _tensor_dtype(state: Mapping[str, Tensor]) -> str:
    kinds = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
    return kinds[0] if len(kinds) == 1 else "mixed:" + ",".join(kinds)


def _unpickle_reason(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "Unsupported global" in ln or "WeightsUnpickler error" in ln:
            return ln[:300]
    return lines[0][:300] if lines else type(e).__name__


def _one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split())


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_or(v: Any, default: int) -> int:
    return int(v) if _is_int(v) and v >= 1 else default
