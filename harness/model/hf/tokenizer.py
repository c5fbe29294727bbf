"""The text tokenizer of an ``hf:`` model: its own ``AutoTokenizer``, from local files only.

Task cells tokenise prompts with it and decode answers with it; the quality stage decodes saved
samples with it. :func:`text_tokenizer` returns an :class:`HFTextTokenizer`, which has the
``bos_id`` / ``encode`` / ``decode`` of dlmbench's own ``TextTokenizer``
(``harness/train/tokenizer.py``), so callers treat the two alike: a prompt's ids are
``[bos_id] + encode(prompt)``, or ``encode(prompt)`` alone when ``bos_id`` is ``None``.

* Plain prompts: ``encode`` adds no special tokens, and ``bos_id`` is the token the tokenizer
  itself puts before a text (``tokenizer(text)`` with its special tokens, e.g. LLaMA's
  ``<s>`` or BERT's ``[CLS]``), or ``None`` when it puts none. What it appends after a text
  (BERT's ``[SEP]``, an EOS) is left out: generation continues after the prompt.
* ``hf.chat_template: true``: ``encode`` is the chat template applied to one user turn with
  the generation prompt, ``apply_chat_template([{"role": "user", "content": prompt}],
  add_generation_prompt=True)``, and ``bos_id`` is ``None`` (the template writes its own
  special tokens).
* ``decode`` keeps special tokens unless asked (``skip_special``), like ``TextTokenizer``;
  ``stops`` are the texts an answer is cut at: a newline, the EOS token's text, and
  ``<|endoftext|>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.model.hf.config import HFModelConfig
from harness.model.hf.spec import HFModelError

PROBE_TEXT = "hello"
"""A plain text whose encoding with and without special tokens shows what the tokenizer adds."""

DEFAULT_STOPS = ("\n", "<|endoftext|>")
"""``harness.tasks.scoring.predict_answer``'s stops, kept for every tokenizer."""


def leading_special_id(tok: Any) -> int | None:
    """The id the tokenizer puts before a text when it adds special tokens, or ``None``.

    ``tok(text)`` with special tokens is compared with ``tok(text)`` without: one extra id in
    front of the plain ids is the tokenizer's BOS (or CLS); anything appended is ignored.
    """
    plain = list(tok.encode(PROBE_TEXT, add_special_tokens=False))
    full = list(tok.encode(PROBE_TEXT, add_special_tokens=True))
    if len(full) > len(plain) and full[1 : 1 + len(plain)] == plain:
        return int(full[0])
    return None


class HFTextTokenizer:
    """An ``hf:`` model's ``AutoTokenizer`` behind ``TextTokenizer``'s interface.

    Args:
        tokenizer: the loaded transformers tokenizer.
        config: the model's :class:`HFModelConfig` (its ``eos_index`` names the EOS).
        chat_template: wrap prompts in the chat template (``hf.chat_template``).

    Attributes:
        hf: the transformers tokenizer.
        bos_id: the id put before each prompt, or ``None`` (see the module docstring).
        eos_id: the model's EOS id (config, else the tokenizer's), or ``None``.
        stops: texts a decoded answer is cut at.
    """

    def __init__(self, tokenizer: Any, config: HFModelConfig, chat_template: bool = False) -> None:
        self.hf = tokenizer
        self.chat_template = chat_template
        self.bos_id = None if chat_template else leading_special_id(tokenizer)
        eos = config.eos_index if config.eos_index is not None else tokenizer.eos_token_id
        self.eos_id: int | None = None if eos is None else int(eos)
        eos_text = None if eos is None else tokenizer.convert_ids_to_tokens(int(eos))
        extra = (eos_text,) if isinstance(eos_text, str) and eos_text.strip() else ()
        self.stops: tuple[str, ...] = tuple(
            dict.fromkeys(DEFAULT_STOPS[:1] + extra + DEFAULT_STOPS[1:])
        )

    def encode(self, text: str) -> list[int]:
        """A prompt's ids: plain (no special tokens), or the chat template's user turn."""
        if not self.chat_template:
            return [int(i) for i in self.hf.encode(text, add_special_tokens=False)]
        out = self.hf.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        if isinstance(out, Mapping):  # a BatchEncoding from releases that ignore return_dict
            out = out["input_ids"]
        return [int(i) for i in out]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Ids → text, special tokens kept unless ``skip_special``."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)


def text_tokenizer(cfg: HFModelConfig) -> HFTextTokenizer:
    """The tokenizer of the ``hf:`` model ``cfg``, loaded from its directory (never downloaded).

    Raises:
        HFModelError: the directory holds no tokenizer, or it cannot be loaded.
    """
    from harness.model.hf.load import transformers_module

    if cfg.tokenizer is None:
        raise HFModelError(
            f"'{cfg.spec.source}' holds no tokenizer files (tokenizer.json / "
            "tokenizer_config.json), so prompts cannot be tokenised nor samples decoded. Copy the "
            f"model's tokenizer into the directory (`{cfg.spec.download_hint()}`)."
        )
    tf = transformers_module()
    try:
        tok = tf.AutoTokenizer.from_pretrained(
            str(Path(cfg.tokenizer).expanduser()),
            local_files_only=True,
            trust_remote_code=cfg.spec.options.trust_remote_code,
        )
    except (OSError, ValueError) as e:
        raise HFModelError(
            f"the tokenizer of '{cfg.spec.source}' cannot be loaded: {e}. Re-download the model "
            f"directory (`{cfg.spec.download_hint()}`)."
        ) from None
    return HFTextTokenizer(tok, cfg, chat_template=cfg.spec.options.chat_template)
