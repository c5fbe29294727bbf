"""The model config samplers read from an ``hf:`` model, built from its JSON files (torch-free).

:func:`read_config` reads ``config.json`` and the tokenizer's JSON files (never the weights), so
``dlmbench validate`` and the runner's planning see the same :class:`HFModelConfig` the loaded
adapter carries. Where each field comes from:

* ``vocab_size``: the logits' width: ``embedding_size`` (LLaDA pads its head) else
  ``vocab_size`` (``text_config.vocab_size`` for DiffusionGemma). The loader checks it against
  the output head.
* ``mask_index``: ``hf.mask_id``, else config.json ``mask_token_id``, else the tokenizer's mask
  token (``tokenizer_config.json`` / ``special_tokens_map.json`` name it, ``added_tokens`` or the
  vocabulary give its id). DiffusionGemma has none (uniform corruption).
* ``bos_index`` / ``eos_index``: ``hf.bos_id`` / ``hf.eos_id``, else config.json
  ``bos_token_id`` / ``eos_token_id`` (the first of a list), else the tokenizer.
* ``model_length``: ``max_position_embeddings`` or ``max_sequence_length`` (LLaDA).
* ``block_size``: DiffusionGemma's ``canvas_length``; ``None`` for the other kinds.
* ``attention_mask``: ``hf.attention_mask``, or for ``auto`` the model type's format (``4d`` for
  Dream, ``4d_additive`` for LLaDA2.x's ``llada2_moe``, else ``2d``).
* ``block_causal`` (a property): ``hf.block_causal``, checked against the resolved kind and mask
  format (a (b, n) mask cannot carry it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dlmcore.configio import ConfigError
from dlmcore.errors import short_repr
from harness.model.hf.spec import (
    ADDITIVE_MASK_MODEL_TYPES,
    CHAT_TEMPLATE_FILES,
    FOUR_D_MASK_MODEL_TYPES,
    MASK_KINDS,
    SHIFTED_MODEL_TYPES,
    WEIGHT_FILES,
    WEIGHT_INDEXES,
    HFModelError,
    HFSpec,
    collect_spec,
    directory_problems,
    read_json,
    resolve_kind,
)

MAX_HEADER_BYTES = 100_000_000
"""Largest safetensors header :func:`parameter_count` reads (the format's own limit)."""

FAMILY_OF_KIND = {"masked_lm": "mdlm", "remote_code": "mdlm", "diffusion_gemma": "uniform_block"}
"""Sampler family of each adapter kind (``uniform_block``: no mask token, block canvas)."""


@dataclass(frozen=True)
class HFModelConfig:
    """What samplers and the runner read from an ``hf:`` model (``model.config``).

    Attributes:
        family: ``mdlm`` (bidirectional, mask token) or ``uniform_block`` (DiffusionGemma).
        vocab_size: V, the width of the logits.
        mask_index: the mask token id; ``None`` for uniform-corruption models.
        bos_index: BOS id, or ``None``.
        eos_index: EOS id, or ``None``.
        model_length: the model's position limit, or ``None`` when config.json has none.
        block_size: the canvas (block) length of block-diffusion models, else ``None``.
        logits_shift: whether the raw logit at i predicts token i + 1 (the adapter unshifts).
        attention_mask: ``2d``, ``4d`` or ``4d_additive``, how the adapter's mask (padding,
            block causality) reaches the model.
        kind: the adapter kind (``masked_lm``, ``remote_code``, ``diffusion_gemma``).
        model_type: config.json ``model_type``.
        hidden_size: d, where config.json says.
        n_blocks: transformer layers, where config.json says.
        n_heads: attention heads, where config.json says.
        tokenizer: the directory, when it holds tokenizer files; else ``None``.
        weight_bytes: bytes of the weight files ``from_pretrained`` reads (safetensors preferred),
            for memory estimates before loading.
        spec: the parsed spec (directory and options) the loader uses.
        n_params: parameters stored in the safetensors files (from their headers, no weights
            read; tied weights are stored once), or ``None`` for ``.bin`` checkpoints.
    """

    family: str
    vocab_size: int
    mask_index: int | None
    bos_index: int | None
    eos_index: int | None
    model_length: int | None
    block_size: int | None
    logits_shift: bool
    attention_mask: str
    kind: str
    model_type: str
    hidden_size: int | None
    n_blocks: int | None
    n_heads: int | None
    tokenizer: str | None
    weight_bytes: int
    spec: HFSpec
    n_params: int | None = None

    @property
    def block_causal(self) -> int | None:
        """B when the adapter attends block-causally over blocks of B positions, else ``None``."""
        return self.spec.options.block_causal

    @property
    def mask_id(self) -> int | None:
        """The mask token id m (``None``: the model has no mask token)."""
        return self.mask_index

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the spec nested), for cell hashes and provenance."""
        return asdict(self)

    def size_name(self) -> str:
        """A short size label for result rows: ``hf-<model_type>-d<d>xN<N>``."""
        dims = (
            f"-d{self.hidden_size}xN{self.n_blocks}" if self.hidden_size and self.n_blocks else ""
        )
        return f"hf-{self.model_type.lower()}{dims}"


def read_config(spec: HFSpec) -> HFModelConfig:
    """The :class:`HFModelConfig` of the model at ``spec`` from its JSON files alone.

    Raises:
        ConfigError: every problem of the directory and of the ids it needs, at once.
    """
    cfg, problems = collect_config(spec)
    if cfg is None:
        raise ConfigError(problems, f"Cannot use hf: model '{spec.directory}'")
    return cfg


def problems_of(path: str, options: Mapping[str, Any] | None = None) -> list[str]:
    """Every problem of spec ``path`` + ``options``, as sentences (for ``dlmbench validate``)."""
    spec, problems = collect_spec(path, options)
    if spec is None:
        return problems
    return collect_config(spec)[1]


def collect_config(spec: HFSpec) -> tuple[HFModelConfig | None, list[str]]:
    """:func:`read_config` without raising: ``(config or None, problems)``."""
    problems = directory_problems(spec)
    if problems:
        return None, problems
    root = Path(spec.directory).expanduser()
    doc = read_json(root / "config.json")
    kind = resolve_kind(spec, doc)
    text = doc.get("text_config") if kind == "diffusion_gemma" else doc
    text = text if isinstance(text, Mapping) else {}
    tok = TokenizerFiles(root)
    vocab = _first_int(text, "embedding_size", "vocab_size")
    mask = None if kind == "diffusion_gemma" else _mask_id(spec, doc, tok)
    out = []
    if vocab is None or vocab < 2:
        out.append(f"'{spec.source}': config.json gives no vocab_size; is this a language model?")
    if kind != "diffusion_gemma" and mask is None:
        out.append(
            f"'{spec.source}': no mask token: config.json has no 'mask_token_id' and the "
            "tokenizer names none. Set hf.mask_id (e.g. 126336 for LLaDA)."
        )
    if vocab is not None and mask is not None and not 0 <= mask < vocab:
        out.append(
            f"'{spec.source}': mask id {mask} lies outside the vocabulary [0, {vocab - 1}]. "
            "Fix hf.mask_id."
        )
    if spec.options.chat_template and not has_chat_template(root, tok):
        out.append(
            f"'{spec.source}': chat_template is true but the directory holds no chat template "
            f"({' / '.join(CHAT_TEMPLATE_FILES)}, or 'chat_template' in tokenizer_config.json). "
            "Set chat_template: false, or use the model's chat/instruct release."
        )
    model_type = str(doc.get("model_type", "unknown"))
    mask_format = resolve_mask_format(spec, model_type)
    out += block_causal_problems(spec, kind, model_type, mask_format)
    if out:
        return None, out
    shifted = spec.options.logits_shift
    if shifted is None:
        shifted = model_type.lower() in SHIFTED_MODEL_TYPES
    return (
        HFModelConfig(
            family=FAMILY_OF_KIND[kind],
            vocab_size=int(vocab),
            mask_index=mask,
            bos_index=_special_id(spec.options.bos_id, text, "bos_token_id", tok, "bos_token"),
            eos_index=_special_id(spec.options.eos_id, text, "eos_token_id", tok, "eos_token"),
            model_length=_first_int(text, "max_position_embeddings", "max_sequence_length"),
            block_size=_first_int(doc, "canvas_length") if kind == "diffusion_gemma" else None,
            logits_shift=bool(shifted),
            attention_mask=mask_format,
            kind=kind,
            model_type=model_type,
            hidden_size=_first_int(text, "hidden_size", "d_model"),
            n_blocks=_first_int(text, "num_hidden_layers", "n_layers"),
            n_heads=_first_int(text, "num_attention_heads", "n_heads"),
            tokenizer=str(root) if tok.present else None,
            weight_bytes=weight_bytes(root),
            spec=spec,
            n_params=parameter_count(root),
        ),
        [],
    )


def resolve_mask_format(spec: HFSpec, model_type: str) -> str:
    """``hf.attention_mask``, or for ``auto`` the format the model type takes."""
    fmt = spec.options.attention_mask
    if fmt != "auto":
        return fmt
    if model_type.lower() in FOUR_D_MASK_MODEL_TYPES:
        return "4d"
    return "4d_additive" if model_type.lower() in ADDITIVE_MASK_MODEL_TYPES else "2d"


def block_causal_problems(spec: HFSpec, kind: str, model_type: str, mask_format: str) -> list[str]:
    """``hf.block_causal`` on a kind without an adapter-built mask, or with a (b, n) mask."""
    B = spec.options.block_causal
    if B is None:
        return []
    if kind not in MASK_KINDS:
        return [
            f"'{spec.source}': block_causal is {B} but this is a {kind} model, whose adapter "
            f"builds no attention mask; block_causal applies to {' and '.join(MASK_KINDS)} "
            "models. Remove it."
        ]
    if mask_format == "2d":
        return [
            f"'{spec.source}': block_causal is {B} but model_type {model_type!r} takes a (b, n) "
            "attention_mask by default, which cannot say which blocks a query sees. Set "
            "hf.attention_mask to '4d' (boolean) or '4d_additive' (float, 0 / -inf), whichever "
            "its forward takes."
        ]
    return []


def has_chat_template(root: Path, tok: TokenizerFiles) -> bool:
    """Whether the tokenizer in ``root`` carries a chat template (file or config entry)."""
    if any((root / f).is_file() for f in CHAT_TEMPLATE_FILES):
        return True
    return bool((tok.docs.get("tokenizer_config.json") or {}).get("chat_template"))


def weight_bytes(root: Path) -> int:
    """Bytes of the weight files ``from_pretrained`` reads: safetensors first, else ``.bin``."""
    for single, index in zip(WEIGHT_FILES, WEIGHT_INDEXES):
        if (root / index).is_file():
            wmap = read_json(root / index).get("weight_map", {})
            shards = set(wmap.values()) if isinstance(wmap, Mapping) else set()
            return sum((root / str(s)).stat().st_size for s in shards if (root / str(s)).is_file())
        if (root / single).is_file():
            return (root / single).stat().st_size
    return 0


def parameter_count(root: Path) -> int | None:
    """Parameters in the safetensors weights of ``root``, from the file headers alone.

    A safetensors file starts with an 8-byte little-endian header length and a JSON header
    mapping each tensor to its ``shape``; nothing past the header is read. ``None`` when the
    weights are ``.bin`` files or a header cannot be read.
    """
    index = root / WEIGHT_INDEXES[0]
    if index.is_file():
        wmap = read_json(index).get("weight_map", {})
        files = sorted({str(v) for v in wmap.values()}) if isinstance(wmap, Mapping) else []
    elif (root / WEIGHT_FILES[0]).is_file():
        files = [WEIGHT_FILES[0]]
    else:
        return None
    total = 0
    for name in files:
        shapes = _safetensors_shapes(root / name)
        if shapes is None:
            return None
        total += sum(math.prod(s) for s in shapes)
    return total


def _safetensors_shapes(path: Path) -> list[list[int]] | None:
    """The tensor shapes a safetensors header lists, or ``None`` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    shapes = [
        v.get("shape") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
    ]
    if not all(isinstance(s, list) and all(isinstance(x, int) for x in s) for s in shapes):
        return None
    return shapes


def _first_int(doc: Mapping[str, Any], *keys: str) -> int | None:
    for k in keys:
        v = doc.get(k)
        if isinstance(v, list) and v:
            v = v[0]
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _mask_id(spec: HFSpec, doc: Mapping[str, Any], tok: TokenizerFiles) -> int | None:
    if spec.options.mask_id is not None:
        return spec.options.mask_id
    found = _first_int(doc, "mask_token_id")
    return found if found is not None else tok.special_id("mask_token")


def _special_id(
    override: int | None, doc: Mapping[str, Any], key: str, tok: TokenizerFiles, name: str
) -> int | None:
    if override is not None:
        return override
    found = _first_int(doc, key)
    return found if found is not None else tok.special_id(name)


class TokenizerFiles:
    """The special tokens a tokenizer directory declares, read from its JSON files.

    Args:
        root: the model directory.
    """

    def __init__(self, root: Path) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
            path = root / name
            if path.is_file():
                try:
                    self.docs[name] = read_json(path)
                except HFModelError:
                    continue
        self.present = bool(self.docs)

    def special_id(self, name: str) -> int | None:
        """The id of special token ``name`` (``mask_token``, ``bos_token``, ...), or ``None``."""
        text = self._content(name)
        return None if text is None else self.token_id(text)

    def _content(self, name: str) -> str | None:
        for doc in (
            self.docs.get("tokenizer_config.json"),
            self.docs.get("special_tokens_map.json"),
        ):
            val = (doc or {}).get(name)
            if isinstance(val, Mapping):
                val = val.get("content")
            if isinstance(val, str) and val:
                return val
        return None

    def token_id(self, text: str) -> int | None:
        """The id of token ``text`` in the added tokens or the vocabulary, or ``None``."""
        decoder = (self.docs.get("tokenizer_config.json") or {}).get("added_tokens_decoder")
        if isinstance(decoder, Mapping):
            for key, entry in decoder.items():
                if (
                    isinstance(entry, Mapping)
                    and entry.get("content") == text
                    and str(key).isdigit()
                ):
                    return int(key)
        tj = self.docs.get("tokenizer.json") or {}
        for entry in tj.get("added_tokens") or []:
            if isinstance(entry, Mapping) and entry.get("content") == text:
                tid = entry.get("id")
                return tid if isinstance(tid, int) else None
        vocab = (
            (tj.get("model") or {}).get("vocab") if isinstance(tj.get("model"), Mapping) else None
        )
        if isinstance(vocab, Mapping) and isinstance(vocab.get(text), int):
            return vocab[text]
        return None


def describe(cfg: HFModelConfig) -> str:
    """One line for listings: kind, model type, V, mask id, shift."""
    block = f", block_causal {cfg.block_causal}" if cfg.block_causal else ""
    return (
        f"{cfg.kind} {cfg.model_type}, family {cfg.family}, V={cfg.vocab_size}, "
        f"mask {short_repr(cfg.mask_index)}, logits_shift {cfg.logits_shift}{block}"
    )
