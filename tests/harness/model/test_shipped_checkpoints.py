"""The checkpoints we ship: complete, small, loadable, and actually trained.

"Trained" is checked against an oracle that cannot be faked by a broken loader: samples from the
shipped weights must score a far lower generative perplexity under the shipped AR evaluator than
samples from the same architecture with random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.model.checkpoints import load_dlmbench_checkpoint
from harness.model.network import DiT, deterministic_init
from harness.quality.evaluators import DiTEvaluator, decode_ids, load_text_tokenizer
from harness.quality.metrics import PROTOCOLS, generative_perplexity
from samplers.base import SAMPLERS

ROOT = Path(__file__).resolve().parents[3]
CKPT = ROOT / "checkpoints"
SHIPPED = ("ar", "mdlm", "bd3lm-b4", "esolm", "evaluator-ar")
MAX_BYTES = 10 * 2**20

# One cheap sampler per family; L = 64 keeps the test a few seconds on 2 cores.
SAMPLER_FOR = {
    "ar": ("ar", {}),
    "mdlm": ("mdlm", {"num_steps": 64}),
    "bd3lm-b4": ("bd3lm", {"block_size": 4, "steps_per_block": 4}),
    "esolm": ("esolm", {"num_steps": 64, "alpha0_eval": 1.0}),
}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_is_complete_and_small(name: str) -> None:
    d = CKPT / name
    files = {p.name for p in d.iterdir()}
    assert {"config.json", "model.safetensors"} <= files, files
    assert (d / "model.safetensors").stat().st_size <= MAX_BYTES
    doc = json.loads((d / "config.json").read_text())
    assert doc["training"]["command"], "a shipped checkpoint names the command that made it"
    assert doc["metrics"]["steps"] == doc["training"]["config"]["steps"]
    loaded = load_dlmbench_checkpoint(d)
    assert loaded.config.family == doc["model"]["family"]
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())


@pytest.fixture(scope="module")
def evaluator() -> DiTEvaluator:
    return DiTEvaluator(CKPT / "evaluator-ar")


def _gen_ppl(model: DiT, name: str, evaluator: DiTEvaluator) -> float:
    sampler_name, kwargs = SAMPLER_FOR[name]
    cls = SAMPLERS.get(sampler_name)
    sampler = cls(cls.config_class(**kwargs))
    model = model.eval().freeze_conditioning()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = sampler.sample(model, batch_size=4, seq_len=64, generator=g)
    tok = load_text_tokenizer(CKPT / "tokenizer" / "tokenizer.json")
    texts = decode_ids(tok, out.tokens, skip=set())
    return generative_perplexity(texts, evaluator, PROTOCOLS["esolm"], max_length=64)["gen_ppl"]


@pytest.mark.parametrize("name", sorted(SAMPLER_FOR))
def test_shipped_checkpoint_beats_random_weights(name: str, evaluator: DiTEvaluator) -> None:
    torch.set_num_threads(2)
    trained = load_dlmbench_checkpoint(CKPT / name).model
    random = deterministic_init(DiT(trained.config), seed=0)
    ppl_trained = _gen_ppl(trained, name, evaluator)
    ppl_random = _gen_ppl(random, name, evaluator)
    assert ppl_trained < 0.5 * ppl_random, (name, ppl_trained, ppl_random)
