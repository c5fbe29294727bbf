"""Unconditional runs pinned before prompted generation was added (the regression oracle).

:func:`pinned_cases` lists sampler configurations; :func:`fingerprint` runs one on a fixed-logits
fake (no network numerics, so the pin does not move with the DiT's kernels) and returns its
tokens, counters and a digest of every network call (method, fed tokens, positions, start, head
rows). ``data/unconditional_pins.json`` holds the fingerprints taken from the implementation as
it was before ``prompt=`` existed; ``test_prompt.py`` asserts they are unchanged.

Regenerate only on purpose: ``python -m tests.samplers.unconditional_pins``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from samplers import SAMPLERS
from tests.samplers.fake_models_b import fixed_model

PIN_FILE = Path(__file__).parent / "data" / "unconditional_pins.json"
V, L, B = 9, 16, 2


def pinned_cases() -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """Case id → (sampler name, config changes, model options)."""
    cases: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {}
    for pol in ("random", "confidence", "left_to_right", "threshold"):
        for sch in ("loglinear", "even"):
            cases[f"mdlm-{pol}-{sch}"] = (
                "mdlm",
                {"num_steps": 8, "policy": pol, "schedule": sch},
                {},
            )
    cases["mdlm-T32"] = ("mdlm", {"num_steps": 32}, {})
    cases["mdlm-topp"] = ("mdlm", {"num_steps": 8, "top_p": 0.8, "temperature": 0.7}, {})
    cases["first_hitting"] = ("mdlm_first_hitting", {}, {})
    for cache in ("efficient", "reference", "none"):
        cases[f"bd3lm-{cache}"] = (
            "bd3lm",
            {"block_size": 4, "steps_per_block": 3, "cache": cache},
            {"bos_index": 7},
        )
    cases["bd3lm-fh-confidence"] = (
        "bd3lm",
        {"block_size": 4, "mode": "first_hitting", "policy": "confidence"},
        {},
    )
    cases["bd3lm-threshold"] = ("bd3lm", {"block_size": 2, "policy": "threshold"}, {"bos_index": 7})
    cases["bd3lm-sliding"] = (
        "bd3lm",
        {"block_size": 4, "steps_per_block": 2, "context_window": 8},
        {"bos_index": 7},
    )
    for kv in (True, False):
        for a0 in (1.0, 0.5):
            cases[f"esolm-kv{kv}-a{a0}"] = (
                "esolm",
                {"num_steps": 8, "alpha0_eval": a0, "kv_cache": kv},
                {},
            )
            cases[f"esolm_block-kv{kv}-a{a0}"] = (
                "esolm_block",
                {"num_steps": 4, "alpha0_eval": a0, "kv_cache": kv},
                {},
            )
        cases[f"ar-kv{kv}"] = ("ar", {"kv_cache": kv}, {"bos_index": 7})
    return cases


def table() -> torch.Tensor:
    """(L, V) seeded logits, mask (last id) logit high so SUBS matters."""
    t = 1.5 * torch.randn(L, V, generator=torch.Generator().manual_seed(1234))
    t[:, -1] = 10.0
    return t


def fingerprint(name: str, changes: dict[str, Any], model_kw: dict[str, Any], seed: int = 3):
    """Run the case on the fake and return a JSON-able fingerprint."""
    cls = SAMPLERS.get(name)
    sampler = cls(cls.config_class(**changes))
    block = changes.get("block_size")
    model = fixed_model(sampler.families[0], table(), block_size=block, **model_kw)
    res = sampler.sample(
        model, batch_size=B, seq_len=L, generator=torch.Generator().manual_seed(seed)
    )
    h = hashlib.sha256()
    for c in model.calls:
        h.update(
            repr((c.method, c.fed.tolist(), c.positions.tolist(), c.start, c.head_rows)).encode()
        )
    return {
        "tokens": res.tokens.tolist(),
        "nfe_denoise": res.nfe_denoise,
        "nfe_total": res.nfe_total,
        "token_forwards": res.token_forwards,
        "calls": [list(c) for c in res.calls],
        "fed_digest": h.hexdigest(),
    }


def main() -> None:
    pins = {cid: fingerprint(*case) for cid, case in pinned_cases().items()}
    PIN_FILE.write_text(json.dumps(pins, indent=0, sort_keys=True) + "\n")
    print(f"wrote {len(pins)} pins to {PIN_FILE}")


if __name__ == "__main__":
    main()
