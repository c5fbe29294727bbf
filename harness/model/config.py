"""The network's configuration and named sizes, torch-free (``dlmbench ls`` reads them cheaply).

:class:`DiTConfig` is mirrored by ``config.json`` of our checkpoint format;
:data:`MODEL_SIZES` names the sizes ``random:<size>`` specs and ``DiTConfig.from_size`` accept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from dlmcore.registry import Registry

SIGMA_FREQ_DIM = 256
"""Width of the σ sinusoid that the AdaLN conditioning map starts from."""

FAMILIES = ("mdlm", "bd3lm", "esolm", "ar")

MODEL_SIZES: Registry[dict[str, int]] = Registry("model size")
"""Named network sizes: ``hidden_size``, ``n_blocks``, ``n_heads``, ``cond_dim``."""

MODEL_SIZES.add("tiny", {"hidden_size": 32, "n_blocks": 2, "n_heads": 2, "cond_dim": 8})
MODEL_SIZES.add("cpu-s", {"hidden_size": 128, "n_blocks": 4, "n_heads": 4, "cond_dim": 128})
MODEL_SIZES.add("cpu-m", {"hidden_size": 256, "n_blocks": 4, "n_heads": 4, "cond_dim": 128})
MODEL_SIZES.add("small", {"hidden_size": 768, "n_blocks": 12, "n_heads": 12, "cond_dim": 128})
MODEL_SIZES.add("medium", {"hidden_size": 1024, "n_blocks": 24, "n_heads": 16, "cond_dim": 128})


@dataclass(frozen=True)
class DiTConfig:
    """Network configuration; mirrored by ``config.json`` of our checkpoint format.

    Attributes:
        family: model family, one of ``mdlm``, ``bd3lm``, ``esolm``, ``ar``.
        vocab_size: V, including the mask token.
        hidden_size: d.
        n_blocks: N, transformer blocks.
        n_heads: H; ``hidden_size`` must divide evenly.
        cond_dim: AdaLN conditioning width c_dim (ignored by ``ar``).
        model_length: training length; not a limit (rotary is computed on demand).
        mask_index: mask token id; ``None`` means ``vocab_size - 1``.
        bos_index: BOS id (AR and BD3-LM samplers put it at position 0); ``None`` = no BOS.
        eos_index: EOS id, used by quality metrics; ``None`` = same as ``bos_index``.
        block_size: BD3-LM block size L' the model was trained with (``None`` otherwise).
        time_conditioning: whether σ is live (DUO); all benchmarked families use σ = 0.
        dropout: residual dropout in training.
        rope_base: rotary base.
        mlp_ratio: MLP width multiple.
        tokenizer: name or path of the tokenizer (provenance; not used by the network).
    """

    family: str = "mdlm"
    vocab_size: int = 8193
    hidden_size: int = 128
    n_blocks: int = 4
    n_heads: int = 4
    cond_dim: int = 128
    model_length: int = 256
    mask_index: int | None = None
    bos_index: int | None = None
    eos_index: int | None = None
    block_size: int | None = None
    time_conditioning: bool = False
    dropout: float = 0.0
    rope_base: float = 10000.0
    mlp_ratio: int = 4
    tokenizer: str | None = None

    @property
    def adaln(self) -> bool:
        """Whether the network has AdaLN conditioning (every family but AR)."""
        return self.family != "ar"

    @property
    def head_dim(self) -> int:
        """d_h = d / H."""
        return self.hidden_size // self.n_heads

    @property
    def mask_id(self) -> int:
        """The mask token id m."""
        return self.vocab_size - 1 if self.mask_index is None else self.mask_index

    def problems(self) -> list[str]:
        """Every inconsistency in this config, as readable sentences (empty when valid)."""
        out = []
        if self.family not in FAMILIES:
            out.append(f"'family' is '{self.family}'; allowed: {', '.join(FAMILIES)}.")
        for name in ("vocab_size", "hidden_size", "n_blocks", "n_heads", "cond_dim"):
            if int(getattr(self, name)) < 1:
                out.append(f"'{name}' is {getattr(self, name)}; it must be >= 1.")
        if self.n_heads >= 1 and self.hidden_size % self.n_heads:
            out.append(
                f"'hidden_size' {self.hidden_size} is not divisible by 'n_heads' {self.n_heads}."
            )
        elif self.n_heads >= 1 and self.head_dim % 2:
            out.append(f"head dim {self.head_dim} must be even for rotary embeddings.")
        if not 0 <= self.mask_id < self.vocab_size:
            out.append(
                f"'mask_index' is {self.mask_index}; it must lie in [0, {self.vocab_size - 1}] "
                f"(vocab_size {self.vocab_size} includes the mask token)."
            )
        for name in ("bos_index", "eos_index"):
            val = getattr(self, name)
            if val is not None and not 0 <= val < self.vocab_size:
                out.append(f"'{name}' is {val}; it must lie in [0, {self.vocab_size - 1}].")
        if self.block_size is not None and self.block_size < 1:
            out.append(f"'block_size' is {self.block_size}; it must be >= 1.")
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"'dropout' is {self.dropout}; it must lie in [0, 1).")
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the ``config.json`` of our checkpoint format)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: unknown keys (with did-you-mean) or an invalid resulting config.
        """
        from dlmcore.registry import did_you_mean

        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hints = "".join(did_you_mean(k, sorted(known)) for k in unknown)
            raise ValueError(f"Unknown DiTConfig keys {unknown}.{hints} Allowed: {sorted(known)}.")
        cfg = cls(**data)
        cfg.check()
        return cfg

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> DiTConfig:
        """Build a config from a named size (``tiny``, ``cpu-s``, ``cpu-m``, ``small``, ...)."""
        return replace(cls(), **{**MODEL_SIZES.get(size), **overrides})

    def num_parameters(self) -> int:
        """Parameter count of the DiT this config builds, without building it (torch-free).

        Embedding V·d; per block two LayerNorm scales, QKV and output projections (bias-free),
        the MLP (d → r·d → d, with biases) and, with AdaLN, a c → 6d modulation; the σ map
        (256 → c → c) and the final layer (LayerNorm, V·d + V head, AdaLN c → 2d). Tested equal to
        ``DiT(cfg).num_parameters()`` for every named size and family.
        """
        d, c, r, v = self.hidden_size, self.cond_dim, self.mlp_ratio, self.vocab_size
        block = 2 * d + 3 * d * d + d * d + (r * d * d + r * d) + (r * d * d + d)
        head = d + v * d + v
        total = v * d + self.n_blocks * block + head
        if self.adaln:
            sigma_map = SIGMA_FREQ_DIM * c + c + c * c + c
            total += self.n_blocks * (6 * d * c + 6 * d) + sigma_map + (2 * d * c + 2 * d)
        return total

    def check(self) -> None:
        """Raise one ``ValueError`` listing every problem, if any."""
        probs = self.problems()
        if probs:
            raise ValueError("Invalid network config:\n  - " + "\n  - ".join(probs))
