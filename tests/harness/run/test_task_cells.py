"""Task cells on our own checkpoints: prompt batches, canvas lengths, scoring and the row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness import results
from harness.run import taskcell
from harness.run.experiment import TaskRef
from harness.run.sweep import run_experiment
from harness.tasks.suite import generate
from harness.train.tokenizer import TextTokenizer
from samplers.base import SampleResult

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.from_file(ROOT / "checkpoints" / "tokenizer" / "tokenizer.json")


@pytest.mark.parametrize(
    ("P", "G", "block", "want"),
    [(11, 12, None, 12), (11, 12, 4, 13), (12, 12, 4, 12), (3, 1, 8, 5), (7, 9, 1, 9)],
)
def test_generation_length_fills_the_last_block(P, G, block, want):
    got = taskcell.gen_len(P, G, block)
    assert got == want and got >= G and (block is None or (P + got) % block == 0)


def test_prompt_batches_group_by_token_length_and_keep_every_example(tok):
    examples = generate("kv", 1, 9, 0) + generate("phrase", 1, 7, 0)
    batches = taskcell.prompt_batches(examples, tok, batch_size=3, gen=6, block=4)
    seen = [ex.id for b in batches for ex in b.examples]
    assert sorted(seen) == sorted(ex.id for ex in examples)  # each once
    assert [b.prompt_len for b in batches] == sorted(b.prompt_len for b in batches)
    for b in batches:
        assert 1 <= b.size <= 3 and (b.prompt_len + b.gen_len) % 4 == 0 and b.gen_len >= 6
        for ex, row in zip(b.examples, b.prompt, strict=True):  # [BOS] prompt, independently
            assert row.tolist() == [tok.bos_id, *tok.encode(ex.prompt)]


def _answer_result(batch: taskcell.PromptBatch, texts: list[str], tok) -> SampleResult:
    """A canvas [prompt ; text ; EOS …] per row, as a sampler would return it."""
    rows = []
    for prompt, text in zip(batch.prompt.tolist(), texts, strict=True):
        gen = (tok.encode(text) + [tok.eos_id] * batch.gen_len)[: batch.gen_len]
        rows.append(prompt + gen)
    return SampleResult(torch.tensor(rows), nfe_denoise=4, nfe_total=5, token_forwards=0)


def test_scoring_counts_right_and_wrong_answers_and_cuts_at_eos(tok):
    examples = generate("reverse", 1, 6, 3)
    batches = taskcell.prompt_batches(examples, tok, batch_size=4, gen=16)
    want, outs = {}, []
    for batch in batches:
        texts = []
        for ex in batch.examples:
            i = examples.index(ex)
            if i % 3 == 1:  # the prompt order instead: wrong unless a palindrome
                texts.append(" " + ex.answer.strip()[::-1])
            elif i % 3 == 2:  # a right answer with more after it: wrong
                texts.append(ex.answer + " 7")
            else:
                texts.append(ex.answer)
            want[ex.id] = " ".join(texts[-1].split()) == " ".join(ex.answer.split())
        outs.append(_answer_result(batch, texts, tok))
    cell = type("C", (), {"task": TaskRef("reverse", 1, 6), "seed": 0})()
    cols, records = taskcell.score_batches(batches, outs, tok, cell)
    assert {r["id"]: r["correct"] for r in records} == want
    assert 0 < sum(want.values()) < 6
    assert cols["n_examples"] == 6 and cols["accuracy"] == sum(want.values()) / 6
    assert cols["accuracy_lo"] <= cols["accuracy"] <= cols["accuracy_hi"]
    first = next(r for r in records if r["id"] == examples[0].id)
    assert first["prediction"] == examples[0].answer  # cut at the first EOS


def test_a_changed_prompt_or_a_left_mask_is_refused(tok):
    batch = taskcell.prompt_batches(generate("copy", 1, 2, 0), tok, batch_size=2, gen=4)[0]
    cell = type("C", (), {"model_cfg": type("M", (), {"mask_id": 8192})()})()
    ok = _answer_result(batch, [" 1"] * batch.size, tok)
    assert taskcell.check_answers(batch, ok, cell) is None
    changed = ok.tokens.clone()
    changed[0, 1] += 1
    assert "prompt" in taskcell.check_answers(batch, SampleResult(changed, 1, 1, 0), cell)
    masked = ok.tokens.clone()
    masked[-1, -1] = 8192
    assert "mask" in taskcell.check_answers(batch, SampleResult(masked, 1, 1, 0), cell)


TASK_RUN = """\
name: task-cells
checkpoints:
  mdlm: {root}/checkpoints/mdlm
  bd3lm: {root}/checkpoints/bd3lm-b4
  ar: {root}/checkpoints/ar
samplers:
  - {{name: mdlm, sampler: mdlm, checkpoint: mdlm, params: {{num_steps: 3}}}}
  - {{name: fh, sampler: mdlm_first_hitting, checkpoint: mdlm}}
  - name: bd3lm
    sampler: bd3lm
    checkpoint: bd3lm
    params: {{block_size: 4, steps_per_block: 2}}
  - {{name: ar, sampler: ar, checkpoint: ar}}
tasks: {{names: [copy], levels: [1], n: 5, seed: 1}}
seq_lens: [6]
batch_sizes: [2]
timing: {{repeats: 1, warmup: 0}}
output_dir: {out}
"""


def test_a_task_run_on_the_shipped_checkpoints(tmp_path, tok, monkeypatch):
    monkeypatch.setenv("DLMBENCH_PREDICT", "off")
    cfg = tmp_path / "tasks.yaml"
    cfg.write_text(TASK_RUN.format(root=ROOT, out=tmp_path / "results"))
    run_dir = run_experiment(str(cfg), progress=False)
    df = results.load_results(run_dir).set_index("label")
    assert (df["status"] == "ok").all(), df["error"].tolist()
    examples = {ex.id: ex for ex in generate("copy", 1, 5, 1)}
    for label, row in df.iterrows():
        records = [json.loads(x) for x in (run_dir / row["answers_file"]).read_text().splitlines()]
        assert sorted(r["id"] for r in records) == sorted(examples)
        assert row["n_examples"] == 5 and row["accuracy"] == sum(r["correct"] for r in records) / 5
        for r in records:
            ex = examples[r["id"]]
            assert r["prompt_ids"] == [tok.bos_id, *tok.encode(ex.prompt)]  # prompt survived
            P, G = len(r["prompt_ids"]), len(r["gen_ids"])
            assert G >= 6 and (label != "bd3lm" or (P + G) % 4 == 0)
            text = tok.decode(r["gen_ids"]).split("<|endoftext|>")[0].split("\n")[0]
            assert r["prediction"] == text
            assert r["correct"] == (" ".join(text.split()) == " ".join(ex.answer.split()))
        assert row["gen_tokens_per_s"] * row["wall_s"] == pytest.approx(row["gen_tokens"])
        assert row["task"] == "copy" and row["level"] == 1
    assert df.loc["ar", "tokens_per_forward"] == 1.0  # one token per call, prompt prefilled
    assert df.loc["fh", "tokens_per_forward"] == 1.0  # first hitting: one token per call
    assert df.loc["mdlm", "tokens_per_forward"] >= 6 / 3  # at most T = 3 calls for 6 tokens
