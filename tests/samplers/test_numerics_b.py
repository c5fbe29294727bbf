"""Regression: the shared float64 Gumbel noise is finite and Gumbel(0, 1) distributed.

``gumbel_noise`` once negated after the inner clamp, so every draw was log(−tiny) = NaN and
``sample_tokens`` returned token 0 everywhere (found while writing the Eso-LM/BD3-LM samplers).
"""

from __future__ import annotations

import math

import torch

from samplers.base import gumbel_noise, sample_tokens


def test_gumbel_noise_is_finite_with_gumbel_moments():
    """Mean γ and variance π²/6 of 10⁵ draws: 6σ bounds, p_fail < 1e-8."""
    n = 100_000
    z = gumbel_noise((n,), torch.Generator().manual_seed(0), "cpu")
    assert z.dtype == torch.float64 and torch.isfinite(z).all()
    var = math.pi**2 / 6
    assert abs(z.mean().item() - 0.5772156649) < 6 * math.sqrt(var / n)
    # Var of the sample variance ≈ (μ4 − σ⁴)/n with μ4 = 2.4·var² for the Gumbel law.
    assert abs(z.var().item() - var) < 6 * math.sqrt((5.4 - 1) * var**2 / n)


def test_sample_tokens_follows_softmax():
    """4·10⁴ draws from a 4-way law: each frequency within 6σ of its probability (p_fail < 1e-8)."""
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, 5.0])  # id 4 is the mask: never sampled
    n = 40_000
    tok = sample_tokens(logits.expand(n, 5), 4, torch.Generator().manual_seed(1))
    p = torch.softmax(logits[:4].double(), -1)
    freq = torch.bincount(tok, minlength=5).double() / n
    assert freq[4] == 0
    for v in range(4):
        assert abs(freq[v] - p[v]) < 6 * math.sqrt(p[v] * (1 - p[v]) / n), (v, freq, p)


def test_chunked_sampling_draws_exactly_the_unchunked_tokens(monkeypatch):
    """sample_tokens works in cache-sized chunks of rows on CPU; the Gumbel noise is drawn chunk
    by chunk in row-major order from the same generator, so the tokens equal one big draw."""
    from samplers import base

    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(0))
    for top_p in (1.0, 0.8):
        monkeypatch.setattr(base, "SAMPLE_CHUNK_ELEMENTS", 100)  # 2 rows of V = 50 per chunk
        small = sample_tokens(logits, 49, torch.Generator().manual_seed(3), top_p=top_p)
        monkeypatch.setattr(base, "SAMPLE_CHUNK_ELEMENTS", 1 << 30)  # one chunk
        whole = sample_tokens(logits, 49, torch.Generator().manual_seed(3), top_p=top_p)
        assert small.shape == (3, 7) and torch.equal(small, whole)
    assert sample_tokens(logits[:0], 49, torch.Generator()).shape == (0, 7)
    monkeypatch.setattr(base, "SAMPLE_CHUNK_ELEMENTS", 100)
    lp = torch.log_softmax(logits.double(), -1)
    small = base.gumbel_argmax(lp, torch.Generator().manual_seed(4))
    monkeypatch.setattr(base, "SAMPLE_CHUNK_ELEMENTS", 1 << 30)
    assert torch.equal(small, base.gumbel_argmax(lp, torch.Generator().manual_seed(4)))
