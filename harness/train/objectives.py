"""The four training objectives: MDLM, BD3-LM, Eso-LM (B) with α0 = 1, and AR.

Each follows ``training.md`` §1–§5 (the papers' objectives, not approximations):

* **MDLM** (Sahoo et al. 2024): SUBS, masked cross-entropy weighted by −α′_t/(1 − α_t) = 1/t
  (log-linear schedule, α_t = 1 − (1 − ε)t), antithetic t on [ε_s, 1].
* **BD3-LM** (Arriola et al. 2025): input [z_t ; x] of length 2L under the block-diffusion mask,
  rotary positions 0 … L−1 for both halves, a time per block drawn on the clipped range [β, ω],
  resampling of blocks whose realised mask fraction leaves [β, ω], position 0 kept clean.
* **Eso-LM (B)**, α0_train = 1 (Sahoo, Yang et al. 2025): the MDLM loss with a denoiser that is
  causal over an order π putting clean tokens first (sort key 𝟙[masked] + 0.9·v), rotary positions
  gathered by π; ``low_var`` weight 1 in training, the NELBO weight at validation.
* **AR**: causal next-token loss, prepend ``none`` (the row already starts with BOS).

Every objective returns :class:`LossTerms`: the weighted sum and its divisor. Training divides by
b·L (b·(L − 1) for AR; ``training.md`` §1.6). Validation (``train=False``) uses the NELBO weight,
the unclipped range [ε_s, 1] without resampling, keeps position 0 (BOS) clean and counts positions
1 … L−1 only, so all four families score the same tokens (``training.md`` §6.2).

**Prompt conditioning.** Every objective takes an optional ``prompt_len`` (b,) int tensor P: the
positions [0, P) of row i (BOS and the prompt tokens of a task row ``[BOS] prompt answer [EOS] …``)
are never corrupted (no masks in MDLM/Eso-LM, clean in BD3-LM's noisy half; Eso-LM's π then puts
them among the clean tokens) and carry no loss; AR scores only the next-token predictions of
positions ≥ max(P, 1). The divisor counts the scored positions: Σ (L − P) in training (so P = 0 is
the unconditional b·L), Σ (L − max(P, 1)) at validation (so P ≤ 1 is the unconditional
b·(L − 1)). ``prompt_len=None`` runs exactly the unconditional code path (bit-identical losses).

Shapes: b = rows, L = row length, V = vocabulary including the mask, n_b = L / L′ blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.model.network import DiT

SCHEDULE_EPS = 1e-3  # ε of the log-linear schedule, hard-coded in every reference schedule class
RESAMPLE_MAX_ROUNDS = 1000


@dataclass(frozen=True)
class ObjectiveConfig:
    """Settings of the training objectives (mirrored by the training YAML).

    Attributes:
        family: ``mdlm``, ``bd3lm``, ``esolm`` or ``ar``.
        sampling_eps: ε_s, lower end of t (``training.md`` §1.2).
        antithetic: stratified t draws, one per stratum.
        loss_type: ``elbo`` (weight 1/t) or ``low_var`` (weight 1; Eso-LM training only).
        block_size: BD3-LM block size L′.
        clip_min: BD3-LM β, lower end of the training masking rates.
        clip_max: BD3-LM ω, upper end.
        resample: BD3-LM redraws blocks whose mask fraction leaves [β, ω] (§3.3).
    """

    family: Literal["mdlm", "bd3lm", "esolm", "ar"] = "mdlm"
    sampling_eps: float = 1e-3
    antithetic: bool = True
    loss_type: Literal["elbo", "low_var"] = "elbo"
    block_size: int | None = None
    clip_min: float = 1e-3
    clip_max: float = 1.0
    resample: bool = False


@dataclass
class LossTerms:
    """Σ valid·ℓ over a batch and its divisor; the loss is ``total / count``.

    Attributes:
        total: scalar tensor (differentiable in training).
        count: the divisor: b·L in training (b·(L − 1) for AR), scored tokens at validation.
    """

    total: Tensor
    count: int

    @property
    def loss(self) -> Tensor:
        """total / count."""
        return self.total / self.count


# ---------------------------------------------------------------------------------------------
# Shared pieces (training.md §1)
# ---------------------------------------------------------------------------------------------


def alpha(t: Tensor, eps: float = SCHEDULE_EPS) -> Tensor:
    """Log-linear schedule α_t = 1 − (1 − ε)·t (§1.1); α(0) = 1, α(1) = ε."""
    return 1 - (1 - eps) * t


def nelbo_weight(t: Tensor, eps: float = SCHEDULE_EPS) -> Tensor:
    """−α′_t / (1 − α_t) = (1 − ε) / ((1 − ε)·t) = 1/t (§1.1)."""
    return (1 - eps) / (1 - alpha(t, eps))


def stratified_uniform(
    shape: tuple[int, ...], generator: torch.Generator, antithetic: bool
) -> Tensor:
    """u in [0, 1) of ``shape``; antithetic: u_i = (r_i + i)/n over the flattened n entries (§1.2).

    Returns:
        (shape) float32; entry i (row-major) lies in stratum [i/n, (i+1)/n) when antithetic.
    """
    n = 1
    for s in shape:
        n *= s
    r = torch.rand(n, generator=generator, device=generator.device)
    if antithetic:
        r = (r + torch.arange(n, device=r.device)) / n
    return r.view(shape)


def sample_t(b: int, generator: torch.Generator, sampling_eps: float, antithetic: bool) -> Tensor:
    """t_i = ε_s + (1 − ε_s)·u_i ∈ [ε_s, 1], shape (b,) (§1.2)."""
    return sampling_eps + (1 - sampling_eps) * stratified_uniform((b,), generator, antithetic)


def mask_tokens(
    x: Tensor, move_chance: Tensor, generator: torch.Generator, mask_id: int
) -> tuple[Tensor, Tensor]:
    """Forward masking z_ℓ = m iff v_ℓ < 1 − α_t (§1.3).

    Args:
        x: clean ids (b, L).
        move_chance: 1 − α_t broadcastable to (b, L).
        generator: random source.
        mask_id: m.

    Returns:
        z (b, L) and the boolean mask of masked positions (b, L).
    """
    v = torch.rand(x.shape, generator=generator, device=x.device)
    masked = v < move_chance
    return torch.where(masked, torch.full_like(x, mask_id), x), masked


def subs_nll(logits: Tensor, targets: Tensor, mask_id: int) -> Tensor:
    """−log p_θ(target) under SUBS zero-masking: logit[m] = −∞, then log-softmax (§1.4).

    The mask column of ``logits`` is overwritten in place (the network's fresh output; a copy of
    the (b, n, V) tensor would cost as much as the softmax itself). Its gradient is then 0.

    Args:
        logits: raw logits (b, n, V); modified in place.
        targets: ids (b, n), none equal to ``mask_id``.
        mask_id: m.

    Returns:
        (b, n) float32 negative log-probabilities.
    """
    logits[..., mask_id] = float("-inf")
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return nll.view(targets.shape)


def _weights(t: Tensor, cfg: ObjectiveConfig, train: bool) -> Tensor:
    """Per-row (or per-block) loss weight: 1/t for elbo and at validation, 1 for low_var."""
    if train and cfg.loss_type == "low_var":
        return torch.ones_like(t)
    return nelbo_weight(t)


def _count(x: Tensor, train: bool, prompt_len: Tensor | None = None) -> int:
    """Training divisor b·L (§1.6); validation scores positions 1 … L−1 only (§6.2).

    With ``prompt_len`` P (b,): the number of scored positions, Σ (L − P) in training and
    Σ (L − max(P, 1)) at validation.
    """
    b, L = x.shape
    if prompt_len is None:
        return b * L if train else b * (L - 1)
    return int((L - _first_scored(prompt_len, train)).sum())


def _first_scored(prompt_len: Tensor, train: bool) -> Tensor:
    """(b,) first scored position: P in training, max(P, 1) at validation (BOS never scored)."""
    return prompt_len if train else prompt_len.clamp(min=1)


def check_prompt_len(prompt_len: Tensor | None, x: Tensor) -> None:
    """Raise ValueError unless ``prompt_len`` is None or a (b,) integer tensor in [0, L − 1]."""
    if prompt_len is None:
        return
    b, L = x.shape
    if prompt_len.shape != (b,) or prompt_len.is_floating_point():
        raise ValueError(
            f"prompt_len must be an integer tensor of shape ({b},); got {prompt_len.dtype} "
            f"{tuple(prompt_len.shape)}."
        )
    if b and not (0 <= int(prompt_len.min()) and int(prompt_len.max()) <= L - 1):
        raise ValueError(
            f"prompt_len must lie in [0, {L - 1}] (at least one position left to score); got "
            f"values in [{int(prompt_len.min())}, {int(prompt_len.max())}]."
        )


def clean_prefix(
    prompt_len: Tensor | None, L: int, train: bool, device: torch.device, bos_clean: bool = False
) -> Tensor | None:
    """Positions forced clean: (b, L) or (1, L) bool, or None when nothing is.

    Unconditional: none in training, position 0 at validation (and always with ``bos_clean``,
    BD3-LM's ``ignore_bos``). Conditional: positions < P in training, < max(P, 1) at validation,
    plus position 0 with ``bos_clean``.
    """
    pos = torch.arange(L, device=device)
    if prompt_len is None:
        if train and not bos_clean:
            return None
        return (pos == 0)[None]
    keep = pos[None] < _first_scored(prompt_len.to(device), train)[:, None]
    return keep | (pos == 0)[None] if bos_clean else keep


def force_clean(x: Tensor, z: Tensor, masked: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
    """z ← x and masked ← False where ``keep`` (broadcast to (b, L)); unchanged for None."""
    if keep is None:
        return z, masked
    return torch.where(keep, x, z), masked & ~keep


# ---------------------------------------------------------------------------------------------
# MDLM (training.md §2)
# ---------------------------------------------------------------------------------------------


def mdlm_loss(
    model: DiT,
    x: Tensor,
    generator: torch.Generator,
    cfg: ObjectiveConfig,
    train: bool = True,
    prompt_len: Tensor | None = None,
) -> LossTerms:
    """MDLM NELBO: (1/t)·Σ_{masked} −log p_θ(x_ℓ | z_t), bidirectional denoiser.

    Args:
        model: the DiT (family ``mdlm``; any bidirectional family works).
        x: clean rows (b, L).
        generator: random source for t and the masks.
        cfg: objective settings.
        train: training (all positions may be masked, divisor b·L) or validation (position 0
            clean, NELBO weight, divisor b·(L − 1)).
        prompt_len: optional (b,) prompt lengths P; positions < P stay clean and unscored.

    Returns:
        The weighted sum and its divisor.
    """
    check_prompt_len(prompt_len, x)
    b, L = x.shape
    t = sample_t(b, generator, cfg.sampling_eps, cfg.antithetic)  # (b,)
    move = (1 - alpha(t))[:, None]  # (b, 1)
    z, masked = mask_tokens(x, move, generator, model.config.mask_id)
    z, masked = force_clean(x, z, masked, clean_prefix(prompt_len, L, train, x.device))
    logits = model(z, is_causal=False)  # (b, L, V)
    nll = subs_nll(logits, x, model.config.mask_id)  # (b, L)
    total = (nll * masked * _weights(t, cfg, train)[:, None]).sum()
    return LossTerms(total, _count(x, train, prompt_len))


# ---------------------------------------------------------------------------------------------
# BD3-LM (training.md §3)
# ---------------------------------------------------------------------------------------------


def block_diff_mask(seq_len: int, block_size: int, device: torch.device | str = "cpu") -> Tensor:
    """Attention mask of [z_t ; x], (2L, 2L) bool, True = may attend (§3.1 step 6).

    For index i: half h = 0 (noisy) if i < L else 1 (clean), block B = ⌊(i mod L)/L′⌋. Query q
    sees key k iff same half and same block (block-diagonal), or q noisy, k clean and
    B(k) < B(q) (offset block-causal), or both clean and B(k) ≤ B(q) (block-causal).

    Raises:
        ValueError: L′ does not divide L.
    """
    if block_size < 1 or seq_len % block_size:
        raise ValueError(
            f"block_size {block_size} must be >= 1 and divide seq_len {seq_len}; "
            "pick a divisor of the row length."
        )
    i = torch.arange(2 * seq_len, device=device)
    half = i >= seq_len  # (2L,)
    blk = (i % seq_len) // block_size  # (2L,)
    hq, hk = half[:, None], half[None, :]
    bq, bk = blk[:, None], blk[None, :]
    diagonal = (hq == hk) & (bq == bk)
    offset_causal = ~hq & hk & (bk < bq)
    block_causal = hq & hk & (bk <= bq)
    return diagonal | offset_causal | block_causal


def bd3lm_block_t(
    b: int, n_blocks: int, generator: torch.Generator, lo: float, hi: float, antithetic: bool
) -> Tensor:
    """Per-block times t_{j,k} = β + (ω − β)·u_{j,k}, u stratified over b·n_b (§3.1 step 2).

    Returns:
        (b, n_b); row j's blocks share the band [j/b, (j+1)/b) of u when antithetic.
    """
    return lo + (hi - lo) * stratified_uniform((b, n_blocks), generator, antithetic)


def resample_blocks(
    x: Tensor,
    z: Tensor,
    masked: Tensor,
    move: Tensor,
    block_size: int,
    lo: float,
    hi: float,
    generator: torch.Generator,
    mask_id: int,
) -> tuple[Tensor, Tensor]:
    """Redraw every block whose mask fraction f leaves [β, ω], same t, until all pass (§3.3).

    With β = ε_s only f > ω is redrawn; with ω = 1 only f < β.

    Args:
        x: clean rows (b, L).
        z: noisy rows (b, L).
        masked: (b, L) bool.
        move: per-token masking probability (b, L).
        block_size: L′.
        lo: β.
        hi: ω.
        generator: random source.
        mask_id: m.

    Returns:
        (z, masked) after resampling.

    Raises:
        RuntimeError: a block failed to land in [β, ω] after many rounds (an impossible range,
            e.g. no multiple of 1/L′ inside [β, ω]).
    """
    b, L = x.shape
    check_lo, check_hi = lo > SCHEDULE_EPS, hi < 1.0
    for _ in range(RESAMPLE_MAX_ROUNDS):
        frac = masked.view(b, -1, block_size).float().mean(-1)  # (b, n_b)
        bad = torch.zeros_like(frac, dtype=torch.bool)
        if check_lo:
            bad |= frac < lo
        if check_hi:
            bad |= frac > hi
        if not bad.any():
            return z, masked
        redo = bad.repeat_interleave(block_size, dim=1)  # (b, L)
        z_new, m_new = mask_tokens(x, move, generator, mask_id)
        z, masked = torch.where(redo, z_new, z), torch.where(redo, m_new, masked)
    raise RuntimeError(
        f"BD3-LM resampling: some block's mask fraction stayed outside [{lo}, {hi}] after "
        f"{RESAMPLE_MAX_ROUNDS} rounds with block_size {block_size}; widen [clip_min, clip_max]."
    )


def bd3lm_forward(model: DiT, z: Tensor, x: Tensor, block_size: int) -> Tensor:
    """Logits of the noisy half of [z ; x] under the block-diffusion mask, (b, L, V)."""
    L = x.shape[1]
    pos = torch.arange(L, device=x.device)
    positions = torch.cat([pos, pos])  # (2L,): both halves take positions 0 … L−1
    mask = block_diff_mask(L, block_size, x.device)  # (2L, 2L)
    inp = torch.cat([z, x], dim=1)  # (b, 2L)
    return model(inp, positions=positions, attn_mask=mask, logits=slice(0, L))


def bd3lm_loss(
    model: DiT,
    x: Tensor,
    generator: torch.Generator,
    cfg: ObjectiveConfig,
    train: bool = True,
    prompt_len: Tensor | None = None,
) -> LossTerms:
    """BD3-LM loss Σ_k (1/t_k)·Σ_{masked in block k} −log p_θ(x^k_ℓ | z^k, x^{<k}) (§3.1).

    Training draws block times on [β, ω] (``clip_min``, ``clip_max``) and resamples if enabled;
    validation uses [ε_s, 1] without resampling. Position 0 is always clean.

    Args:
        model: the DiT.
        x: clean rows (b, L).
        generator: random source.
        cfg: objective settings; ``block_size`` must divide L.
        train: training or validation.
        prompt_len: optional (b,) prompt lengths P; positions < P stay clean in the noisy half
            and are unscored. Resampling looks at the raw masks, before the prompt (and
            position 0) are made clean, as the reference does for position 0.

    Returns:
        The weighted sum and its divisor.
    """
    check_prompt_len(prompt_len, x)
    b, L = x.shape
    Lb = _bd3_block_size(cfg, L)
    lo, hi = (cfg.clip_min, cfg.clip_max) if train else (cfg.sampling_eps, 1.0)
    t = bd3lm_block_t(b, L // Lb, generator, lo, hi, cfg.antithetic)  # (b, n_b)
    t_tok = t.repeat_interleave(Lb, dim=1)  # (b, L)
    z, masked = mask_tokens(x, t_tok, generator, model.config.mask_id)
    if train and cfg.resample:
        z, masked = resample_blocks(
            x, z, masked, t_tok, Lb, lo, hi, generator, model.config.mask_id
        )
    keep = clean_prefix(prompt_len, L, train, x.device, bos_clean=True)
    z, masked = force_clean(x, z, masked, keep)
    nll = subs_nll(bd3lm_forward(model, z, x, Lb), x, model.config.mask_id)  # (b, L)
    # The reference's β > 0.5 rule (weight 1) serves the t ≡ 1 exact-NLL mode only.
    w = torch.ones_like(t_tok) if train and lo > 0.5 else 1.0 / t_tok
    return LossTerms((nll * masked * w).sum(), _count(x, train, prompt_len))


def _bd3_block_size(cfg: ObjectiveConfig, L: int) -> int:
    if cfg.block_size is None or cfg.block_size < 1 or L % cfg.block_size:
        raise ValueError(
            f"bd3lm needs 'block_size' dividing the row length {L}; got {cfg.block_size}."
        )
    return cfg.block_size


# ---------------------------------------------------------------------------------------------
# Eso-LM (B), α0 = 1 (training.md §4)
# ---------------------------------------------------------------------------------------------


def esolm_order(masked: Tensor, generator: torch.Generator) -> Tensor:
    """π = argsort(𝟙[masked] + 0.9·v), v ~ U[0, 1): clean first, then masks, each shuffled.

    Returns:
        (b, L) int64 permutation per row.
    """
    v = torch.rand(masked.shape, generator=generator, device=masked.device)
    return torch.argsort(masked.float() + 0.9 * v, dim=1)


def esolm_forward(model: DiT, z_sorted: Tensor, order: Tensor) -> Tensor:
    """Causal forward over the π-sorted row with rotary positions π, (b, L, V)."""
    return model(z_sorted, positions=order, is_causal=True)


def esolm_loss(
    model: DiT,
    x: Tensor,
    generator: torch.Generator,
    cfg: ObjectiveConfig,
    train: bool = True,
    prompt_len: Tensor | None = None,
) -> LossTerms:
    """Eso-LM (B) diffusion loss with α0 = 1 and batch_split 1 (§4.1).

    Args:
        model: the DiT.
        x: clean rows (b, L).
        generator: random source for t, masks and π.
        cfg: objective settings (``loss_type`` low_var in the paper's OWT recipe).
        train: training (weight per ``loss_type``) or validation (NELBO weight, position 0 clean).
        prompt_len: optional (b,) prompt lengths P; positions < P stay clean (so π puts them
            among the clean tokens) and are unscored.

    Returns:
        The weighted sum and its divisor.
    """
    check_prompt_len(prompt_len, x)
    b, L = x.shape
    t = sample_t(b, generator, cfg.sampling_eps, cfg.antithetic)  # (b,)
    z, masked = mask_tokens(x, (1 - alpha(t))[:, None], generator, model.config.mask_id)
    z, masked = force_clean(x, z, masked, clean_prefix(prompt_len, L, train, x.device))
    order = esolm_order(masked, generator)  # (b, L)
    z_s, x_s, m_s = z.gather(1, order), x.gather(1, order), masked.gather(1, order)  # (b, L)
    nll = subs_nll(esolm_forward(model, z_s, order), x_s, model.config.mask_id)  # (b, L)
    total = (nll * m_s * _weights(t, cfg, train)[:, None]).sum()
    return LossTerms(total, _count(x, train, prompt_len))


# ---------------------------------------------------------------------------------------------
# AR (training.md §5)
# ---------------------------------------------------------------------------------------------


def ar_loss(
    model: DiT,
    x: Tensor,
    generator: torch.Generator,
    cfg: ObjectiveConfig,
    train: bool = True,
    prompt_len: Tensor | None = None,
) -> LossTerms:
    """Exact NLL Σ_ℓ −log p_θ(x_ℓ | x_{<ℓ}), prepend ``none``: input x[0 … L−2], targets x[1 …].

    ``generator`` and ``cfg`` are unused (the loss is deterministic); the divisor is b·(L − 1)
    in training and validation alike. With ``prompt_len`` P only targets at positions
    ≥ max(P, 1) are scored (the answer given the prompt); divisor Σ (L − max(P, 1)).
    """
    check_prompt_len(prompt_len, x)
    b, L = x.shape
    logits = model(x[:, :-1], is_causal=True)  # (b, L−1, V)
    nll = subs_nll(logits, x[:, 1:], model.config.mask_id)  # (b, L−1)
    if prompt_len is None:
        return LossTerms(nll.sum(), b * (L - 1))
    first = prompt_len.to(x.device).clamp(min=1)  # (b,)
    scored = torch.arange(1, L, device=x.device)[None] >= first[:, None]  # (b, L−1)
    return LossTerms((nll * scored).sum(), int((L - first).sum()))


Objective = Callable[..., LossTerms]
"""``(model, x, generator, cfg, train=True, prompt_len=None) -> LossTerms``."""

OBJECTIVES: dict[str, Objective] = {
    "mdlm": mdlm_loss,
    "bd3lm": bd3lm_loss,
    "esolm": esolm_loss,
    "ar": ar_loss,
}
