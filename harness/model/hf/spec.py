"""``hf:<local directory>`` specs: their options, and what the directory must hold (torch-free).

A spec is the string ``hf:<dir>`` plus an options mapping (YAML, under the checkpoint's ``hf:``
key in the proposed experiment format, see ``docs/hf.md``)::

    checkpoints:
      llada:
        path: hf:/models/LLaDA-8B-Instruct
        hf: {trust_remote_code: true, dtype: bfloat16, hub_id: GSAI-ML/LLaDA-8B-Instruct}

:func:`parse_spec` validates the options (every problem at once, with did-you-mean);
:func:`directory_problems` says exactly what the directory lacks (config.json, weights, shards
named by an index, the remote code named by ``auto_map``) and refuses Hub ids and files with the
download command. Nothing here imports torch or transformers, so ``dlmbench validate`` can check
a config on a machine without the weights or the GPU stack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dlmcore.configio import ConfigError, collect
from dlmcore.errors import UserError, short_repr

HF_PREFIX = "hf:"

KINDS = ("masked_lm", "remote_code", "diffusion_gemma")
"""Adapter kinds (``harness.model.hf.adapters.ADAPTERS`` registers one class for each)."""

SHIFTED_MODEL_TYPES = ("dream",)
"""``model_type`` values (lower case) whose logit at i predicts token i + 1 (``logits_shift``)."""

FOUR_D_MASK_MODEL_TYPES = ("dream",)
"""``model_type`` values whose forward wants a (b, 1, n, n) boolean attention mask, not (b, n)."""

ADDITIVE_MASK_MODEL_TYPES = ("llada2_moe",)
"""``model_type`` values whose forward wants a (b, 1, n, n) additive float mask (0 where a key
may be attended, −inf elsewhere): LLaDA2.x, whose ``generate`` passes
``tril(ones(blocks, blocks))`` expanded to tokens, ``.log()`` in the model's dtype, and whose
forward hands a 4-D mask to attention as it is (a (b, n) one would be made token-causal)."""

MASK_FORMATS = ("2d", "4d", "4d_additive")
"""How a mask reaches the model's ``attention_mask`` (``HFOptions.attention_mask`` besides auto)."""

MASK_KINDS = ("masked_lm", "remote_code")
"""Adapter kinds whose attention mask the adapter builds (``block_causal`` applies to them)."""

AUTO_CLASSES = ("AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM")
"""``auto_map`` entries a remote-code checkpoint is loaded through, in order of preference."""

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
"""Where transformers saves a tokenizer's chat template (else ``tokenizer_config.json``)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HFModelError(UserError, ValueError):
    """An ``hf:`` model cannot be loaded or called as asked; the message says what to do."""


@dataclass(frozen=True)
class HFOptions:
    """Options of an ``hf:`` checkpoint (the YAML ``hf:`` mapping, field for field).

    Attributes:
        kind: adapter kind: ``auto`` (from config.json: ``diffusion_gemma`` model type, an
            ``auto_map`` → ``remote_code``, a ``*ForMaskedLM`` architecture → ``masked_lm``), or
            one of :data:`KINDS`.
        trust_remote_code: run the modeling code shipped in the directory. Required for
            ``remote_code``; never implied.
        logits_shift: the model's logit at i predicts token i + 1 (Dream); ``null`` = from the
            model type (true for :data:`SHIFTED_MODEL_TYPES`).
        mask_id: the mask token id; ``null`` = config.json ``mask_token_id``, else the
            tokenizer's mask token.
        bos_id: BOS id; ``null`` = config.json, else the tokenizer.
        eos_id: EOS id; ``null`` = config.json, else the tokenizer.
        attention_mask: how the adapter's mask reaches the model: ``2d`` (b, n) as HF's
            ``attention_mask`` (key padding only), ``4d`` (b, 1, n, n) boolean (Dream),
            ``4d_additive`` (b, 1, n, n) in the model's dtype, 0 where a key may be attended and
            −inf elsewhere (LLaDA2.x); ``auto`` = from the model type
            (:data:`FOUR_D_MASK_MODEL_TYPES` → ``4d``, :data:`ADDITIVE_MASK_MODEL_TYPES` →
            ``4d_additive``, else ``2d``).
        block_causal: attend block-causally with blocks of this many positions (LLaDA2.x: 32):
            query q may attend key k iff k // B <= q // B (block ids of the positions the model
            gets, so blocks start at position 0 of a row's real tokens) and k is a real token;
            ``null`` = off (bidirectional). Needs a 4-D ``attention_mask`` format.
        dtype: weights dtype at load.
        attn_implementation: transformers' attention backend; ``null`` = its default.
        hub_id: the Hub id the directory was downloaded from (provenance and the download hint
            in error messages only; nothing is downloaded).
        chat_template: prompted runs (task cells) wrap each prompt in the tokenizer's chat
            template as one user turn with the generation prompt
            (``apply_chat_template([{"role": "user", "content": prompt}],
            add_generation_prompt=True)``); the directory must hold a template.
    """

    kind: Literal["auto", "masked_lm", "remote_code", "diffusion_gemma"] = "auto"
    trust_remote_code: bool = False
    logits_shift: bool | None = None
    mask_id: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    attention_mask: Literal["auto", "2d", "4d", "4d_additive"] = "auto"
    block_causal: int | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = None
    hub_id: str | None = None
    chat_template: bool = False

    def problems(self) -> list[str]:
        """Every invalid value, as sentences."""
        out = []
        for name in ("mask_id", "bos_id", "eos_id"):
            val = getattr(self, name)
            if val is not None and val < 0:
                out.append(f"'hf.{name}' is {val}; a token id must be >= 0.")
        out += self.block_causal_problems()
        if self.hub_id is not None and not _HUB_ID.match(self.hub_id):
            out.append(
                f"'hf.hub_id' is {short_repr(self.hub_id)}; expected 'owner/name' as on the Hub "
                "(e.g. GSAI-ML/LLaDA-8B-Instruct), or leave it out."
            )
        return out

    def block_causal_problems(self) -> list[str]:
        """A block length that is not a positive integer, or one the other options cannot carry."""
        B = self.block_causal
        if B is None:
            return []
        if B < 1:
            return [
                f"'hf.block_causal' is {B}; it must be a block length >= 1 (LLaDA2.x: 32), or "
                "null for bidirectional attention."
            ]
        if self.attention_mask == "2d":
            return [
                f"'hf.block_causal' is {B} but 'hf.attention_mask' is '2d': a (b, n) mask "
                "cannot say which blocks a query sees. Set attention_mask to '4d' (boolean) or "
                "'4d_additive' (float), whichever the model's forward takes ('auto' picks "
                "4d_additive for llada2_moe, 4d for Dream)."
            ]
        if self.kind not in ("auto", *MASK_KINDS):
            return [
                f"'hf.block_causal' is {B} but 'hf.kind' is {self.kind!r}, whose adapter builds "
                f"no attention mask; block_causal applies to {' and '.join(MASK_KINDS)} models. "
                "Remove it."
            ]
        return []


@dataclass(frozen=True)
class HFSpec:
    """A parsed ``hf:`` spec: the local directory and its options (frozen, hashable).

    Attributes:
        directory: the model directory, as given (after ``hf:``).
        options: the validated :class:`HFOptions`.
    """

    directory: str
    options: HFOptions = field(default_factory=HFOptions)

    @property
    def source(self) -> str:
        """The spec string, ``hf:<directory>``."""
        return HF_PREFIX + self.directory

    def download_hint(self) -> str:
        """The command that fetches this model into its directory."""
        hub = self.options.hub_id or "<hub-id>"
        return f"huggingface-cli download {hub} --local-dir {self.directory}"


def is_hf(path: str) -> bool:
    """Whether ``path`` is an ``hf:<dir>`` spec."""
    return isinstance(path, str) and path.startswith(HF_PREFIX)


def parse_spec(path: str, options: Mapping[str, Any] | None = None) -> HFSpec:
    """``hf:<dir>`` + options mapping → :class:`HFSpec` (the directory is not checked here).

    Raises:
        ConfigError: not an ``hf:`` spec, an empty directory, or bad options (every problem).
    """
    spec, problems = collect_spec(path, options)
    if spec is None:
        raise ConfigError(problems, f"Invalid hf: checkpoint {short_repr(path)}")
    return spec


def collect_spec(path: str, options: Mapping[str, Any] | None) -> tuple[HFSpec | None, list[str]]:
    """:func:`parse_spec` without raising: ``(spec or None, problems)``."""
    problems = []
    if not is_hf(path):
        problems.append(f"{short_repr(path)} is not an hf: spec; write 'hf:<local directory>'.")
    directory = path[len(HF_PREFIX) :] if is_hf(path) else ""
    if is_hf(path) and not directory.strip():
        problems.append(
            "'hf:' names no directory; write 'hf:<local directory>' holding config.json and the "
            "weights."
        )
    data = dict(options) if isinstance(options, Mapping) else options
    opts, opt_problems = collect(HFOptions, data, prefix="hf")
    problems += opt_problems
    if problems or opts is None:
        return None, problems
    return HFSpec(directory=directory, options=opts), []


# --------------------------------------------------------------------------------------------
# The directory
# --------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``.

    Raises:
        HFModelError: unreadable, not JSON, or not an object.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFModelError(
            f"cannot read {path}: {e}. Re-download the model directory, or fix the file."
        ) from None
    if not isinstance(doc, dict):
        raise HFModelError(f"{path} holds {type(doc).__name__}, not a JSON object.")
    return doc


def location_problems(spec: HFSpec) -> list[str]:
    """Problems with where the spec points: missing, a file, a Hub id (with the download)."""
    d = spec.directory
    try:
        path = Path(d).expanduser()
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError):
        exists = is_dir = False
    if is_dir:
        return []
    if exists:
        return [
            f"'{spec.source}' is a file; hf: specs take a local directory holding config.json "
            "and the weights (the folder `huggingface-cli download <id> --local-dir <dir>` writes)."
        ]
    if _HUB_ID.match(d) and not d.startswith((".", "/")):
        return [
            f"'{spec.source}' looks like a Hub id, not a local directory; hf: specs take a local "
            f"directory and nothing is downloaded. Download it first with `huggingface-cli "
            f"download {d} --local-dir <dir>` and write 'hf:<dir>'."
        ]
    return [
        f"'{spec.source}': directory {d} does not exist. Download the model first with "
        f"`{spec.download_hint()}`."
    ]


def detect_kind(doc: Mapping[str, Any]) -> str | None:
    """The adapter kind config.json implies (see :attr:`HFOptions.kind`), or ``None``."""
    if str(doc.get("model_type", "")).lower() == "diffusion_gemma":
        return "diffusion_gemma"
    if isinstance(doc.get("auto_map"), Mapping) and doc["auto_map"]:
        return "remote_code"
    archs = doc.get("architectures") or []
    if isinstance(archs, list) and any(str(a).endswith("ForMaskedLM") for a in archs):
        return "masked_lm"
    return None


def resolve_kind(spec: HFSpec, doc: Mapping[str, Any]) -> str | None:
    """The kind the spec asks for, or the one config.json implies for ``kind: auto``."""
    return detect_kind(doc) if spec.options.kind == "auto" else spec.options.kind


def kind_problems(spec: HFSpec, doc: Mapping[str, Any]) -> list[str]:
    """An undetectable kind, or remote code without ``trust_remote_code: true``."""
    kind = resolve_kind(spec, doc)
    if kind is None:
        return [
            f"'{spec.source}': cannot tell how to load model_type "
            f"{short_repr(doc.get('model_type'))} with architectures "
            f"{short_repr(doc.get('architectures'))}. Set hf.kind to one of {', '.join(KINDS)}."
        ]
    if kind == "remote_code" and not spec.options.trust_remote_code:
        files = sorted({m for m, _ in _auto_map_refs(doc)}) or ["its auto_map code"]
        return [
            f"'{spec.source}' ships its own modeling code ({', '.join(files)}) that loading would "
            "run. dlmbench runs it only when you opt in: read the code, then set "
            "'trust_remote_code: true' in this checkpoint's hf options."
        ]
    return []


def _auto_map_refs(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(module file, class reference) of every ``auto_map`` entry."""
    amap = doc.get("auto_map")
    if not isinstance(amap, Mapping):
        return []
    out = []
    for ref in amap.values():
        refs = ref if isinstance(ref, list) else [ref]
        for r in refs:
            if isinstance(r, str) and "." in r:
                out.append((r.split("--")[-1].rsplit(".", 1)[0] + ".py", r))
    return out


def remote_code_problems(spec: HFSpec, doc: Mapping[str, Any]) -> list[str]:
    """``auto_map`` code that is missing here or would come from another repository."""
    if resolve_kind(spec, doc) != "remote_code":
        return []
    out = []
    amap = doc.get("auto_map") if isinstance(doc.get("auto_map"), Mapping) else {}
    if not any(k in amap for k in AUTO_CLASSES):
        out.append(
            f"'{spec.source}': config.json auto_map has {sorted(amap)}; dlmbench loads remote "
            f"code through one of {', '.join(AUTO_CLASSES)}. Set hf.kind if this is another kind."
        )
    root = Path(spec.directory).expanduser()
    for module, ref in _auto_map_refs(doc):
        if "--" in ref:
            out.append(
                f"'{spec.source}': auto_map entry {short_repr(ref)} points to code in another "
                "repository, which loading would download. Copy that code into the directory "
                "and point auto_map at the local file."
            )
        elif not (root / module).is_file():
            out.append(
                f"'{spec.source}': auto_map names {module}, which is not in the directory. "
                f"Re-download the model (`{spec.download_hint()}`)."
            )
    return list(dict.fromkeys(out))


def weight_problems(spec: HFSpec) -> list[str]:
    """Missing weights, or shards an index names that are not there."""
    root = Path(spec.directory).expanduser()
    for index in WEIGHT_INDEXES:
        if (root / index).is_file():
            try:
                wmap = read_json(root / index).get("weight_map", {})
            except HFModelError as e:
                return [str(e)]
            shards = sorted(set(wmap.values())) if isinstance(wmap, Mapping) else []
            missing = [s for s in shards if not (root / str(s)).is_file()]
            if not shards:
                return [f"'{spec.source}': {index} lists no shards in 'weight_map'."]
            if missing:
                shown = ", ".join(missing[:4]) + (
                    f" and {len(missing) - 4} more" if missing[4:] else ""
                )
                return [
                    f"'{spec.source}': {len(missing)} of the {len(shards)} weight shards that "
                    f"{index} lists are missing ({shown}). Finish the download: "
                    f"`{spec.download_hint()}`."
                ]
            return []
    if any((root / f).is_file() for f in WEIGHT_FILES):
        return []
    return [
        f"'{spec.source}': no weights: expected {' or '.join(WEIGHT_FILES)}, or a sharded "
        f"checkpoint with {' or '.join(WEIGHT_INDEXES)}. Download them: `{spec.download_hint()}`."
    ]


def directory_problems(spec: HFSpec) -> list[str]:
    """Everything the directory lacks for this spec, each with what to do (empty when usable)."""
    out = location_problems(spec)
    if out:
        return out
    cfg = Path(spec.directory).expanduser() / "config.json"
    if not cfg.is_file():
        return [
            f"'{spec.source}': config.json is missing, so this is not a Hugging Face model "
            f"directory. Download the model: `{spec.download_hint()}`."
        ] + weight_problems(spec)
    try:
        doc = read_json(cfg)
    except HFModelError as e:
        return [str(e)]
    return kind_problems(spec, doc) + remote_code_problems(spec, doc) + weight_problems(spec)
