"""A small sampler for the runner's tests: follows samplers/base.py's protocol on a real DiT.

It unmasks a random permutation of positions in ``num_steps`` equal chunks with one uncached
forward per step (an MDLM-like loop), and can be told to fail: raise at a step, or raise
``torch.OutOfMemoryError`` above a batch size. Registered only inside tests (``register()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from samplers.base import (
    SAMPLERS,
    SamplerError,
    SampleResult,
    check_common,
    numerics_problems,
    sample_tokens,
)


@dataclass(frozen=True)
class FakeConfig:
    num_steps: int = 2
    block_size: int | None = None
    fail_at_step: int = -1
    oom_above_batch: int = 0
    tags: tuple[int, ...] = ()
    temperature: float = 1.0
    top_p: float = 1.0
    top_p_convention: str = "hf"
    profile: bool = False

    def problems(self) -> list[str]:
        out = numerics_problems(self)
        if self.num_steps < 1:
            out.append(f"'num_steps' is {self.num_steps}; it must be >= 1.")
        return out


class FakeSampler:
    """Chunked random-order unmasking, one full forward per step."""

    name = "fake"
    families: tuple[str, ...] = ("mdlm",)
    config_class = FakeConfig

    def __init__(self, config: FakeConfig) -> None:
        self.config = config

    def plan(self, model: Any, *, batch_size: int, seq_len: int, generator: torch.Generator):
        check_common(batch_size, seq_len)
        if self.config.oom_above_batch and batch_size > self.config.oom_above_batch:
            raise torch.OutOfMemoryError(f"fake OOM at batch {batch_size}")
        order = torch.randperm(seq_len, generator=generator, device=generator.device)
        steps = min(self.config.num_steps, seq_len)
        counts = [len(c) for c in torch.arange(seq_len).chunk(steps)]
        return {"b": batch_size, "L": seq_len, "order": order, "counts": counts}

    def execute(self, model: Any, plan: dict, *, generator: torch.Generator) -> SampleResult:
        cfg, mask = self.config, model.config.mask_id
        b, L = plan["b"], plan["L"]
        x = torch.full((b, L), mask, dtype=torch.long, device=plan["order"].device)
        start, calls = 0, []
        for i, k in enumerate(plan["counts"]):
            if i == cfg.fail_at_step:
                raise SamplerError(f"fake failure at step {i} (fail_at_step={cfg.fail_at_step})")
            logits = model(x)  # (b, L, V)
            calls.append((L, L, L, L))
            pos = plan["order"][start : start + k]
            if not cfg.profile:
                x[:, pos] = sample_tokens(
                    logits[:, pos], mask, generator, temperature=cfg.temperature, top_p=cfg.top_p
                )
            start += k
        n = len(calls)
        return SampleResult(
            tokens=x, nfe_denoise=n, nfe_total=n, token_forwards=n * L,
            step_sizes=[float(c) for c in plan["counts"]], calls=calls,
            info={"nfe_expected": float(n)},
        )  # fmt: skip

    def sample(self, model: Any, *, batch_size: int, seq_len: int, generator: torch.Generator):
        plan = self.plan(model, batch_size=batch_size, seq_len=seq_len, generator=generator)
        return self.execute(model, plan, generator=generator)

    def expected_calls(self, model_config: Any, *, batch_size: int, seq_len: int):
        return [(seq_len, seq_len, seq_len, seq_len)] * min(self.config.num_steps, seq_len)


class FakeARSampler(FakeSampler):
    """The same loop, declared for the ``ar`` family (family-mismatch tests)."""

    name = "fake_ar"
    families = ("ar",)


FAKES = {"fake": FakeSampler, "fake_ar": FakeARSampler}


def register() -> None:
    for name, cls in FAKES.items():
        SAMPLERS.add(name, cls)


def unregister() -> None:
    for name in FAKES:
        SAMPLERS.remove(name)
