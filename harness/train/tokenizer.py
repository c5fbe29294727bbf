"""The project's 8k byte-level BPE tokenizer, loaded from a local file only.

The tokenizer has 8 192 ids; id 0, ``<|endoftext|>``, is both BOS and EOS. Our networks add one
``[MASK]`` id after them: V = 8 193, mask id 8 192 (``training.md`` §6.2). The file
``checkpoints/tokenizer/tokenizer.json`` is built by ``scripts/build_tokenizer.py`` from the
training split of ``data/corpus`` (:func:`train_tokenizer`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENIZER = REPO_ROOT / "checkpoints" / "tokenizer" / "tokenizer.json"
SPECIAL_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 8192
MASK_TEXT = "[MASK]"


class TextTokenizer:
    """Encode/decode text; knows the BOS/EOS id and the network's mask id.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        path: where it was loaded from (provenance).
    """

    def __init__(self, tokenizer: object, path: str | None = None) -> None:
        self._tok = tokenizer
        self.path = path
        special = self._tok.token_to_id(SPECIAL_TOKEN)
        if special is None:
            raise ValueError(
                f"tokenizer {path!r} has no '{SPECIAL_TOKEN}' token; it is needed as BOS and EOS. "
                "Rebuild it with scripts/build_tokenizer.py."
            )
        self.eos_id: int = int(special)
        self.bos_id: int = int(special)
        self.vocab_size: int = int(self._tok.get_vocab_size())
        self.mask_id: int = self.vocab_size

    @property
    def model_vocab_size(self) -> int:
        """V of the networks: the tokenizer's ids plus ``[MASK]``."""
        return self.vocab_size + 1

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None = None) -> TextTokenizer:
        """Load ``tokenizer.json`` from a local path (default: the shipped one).

        Raises:
            FileNotFoundError: the file does not exist (nothing is ever downloaded).
        """
        from tokenizers import Tokenizer

        p = Path(path) if path is not None else DEFAULT_TOKENIZER
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(
                f"tokenizer file {str(p)!r} not found. Pass the path of a local tokenizer.json "
                f"(the shipped one is {DEFAULT_TOKENIZER}); tokenizers are never downloaded."
            )
        return cls(Tokenizer.from_file(str(p)), str(p))

    def encode(self, text: str) -> list[int]:
        """Text → ids in ``[0, vocab_size)``; no BOS/EOS added."""
        return list(self._tok.encode(text).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Many texts at once (parallel in the Rust library)."""
        return [list(e.ids) for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Ids → text. ``[MASK]`` ids render as ``[MASK]``; BOS/EOS render unless skipped.

        Raises:
            ValueError: an id outside ``[0, mask_id]``.
        """
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i <= self.mask_id]
        if bad:
            raise ValueError(
                f"token ids {bad[:5]} lie outside [0, {self.mask_id}] (vocabulary "
                f"{self.vocab_size} + [MASK]); check the model's vocab_size."
            )
        parts, run = [], []
        for i in ids + [self.mask_id + 1]:
            if i < self.mask_id and not (skip_special and i == self.eos_id):
                run.append(i)
                continue
            if run:
                parts.append(self._tok.decode(run, skip_special_tokens=False))
                run = []
            if i == self.mask_id:
                parts.append(MASK_TEXT)
        return "".join(parts)


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> object:
    """Train a byte-level BPE with ``vocab_size`` ids (``<|endoftext|>`` = id 0 included).

    Args:
        texts: training documents (train split only).
        vocab_size: total ids, special token and 256 byte symbols included.

    Returns:
        A ``tokenizers.Tokenizer``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok
