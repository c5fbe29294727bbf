"""Agreement report of task cells with Fast-dLLM's approximate caches (``agree_*`` columns).

One run on the shipped prompt-conditioned checkpoint ``checkpoints/tasks-mdlm``: ``mdlm_blocks``
(B = 4, near-greedy) with ``cache`` none / prefix / dual at ``steps_per_block`` 1 and 4, on 16
held-out ``brackets`` prompts (several prompt lengths, so several batches per cell). Oracles:
* ``steps_per_block = 1`` is exact by construction (every call is a block-start full forward):
  agreement exactly 1, drift exactly 0, accuracy delta exactly 0;
* ``steps_per_block = 4``: later block steps read stale K/V of the prompt, so the caches
  disagree with the exact path (this seed: on tokens, logits and accuracy);
* an independent replay written out here (own prompt grouping, ``MDLMBlocks`` plan/execute with
  one generator per path as the runner's task pass uses it, own recording of the logits, answers
  scored with ``harness.tasks.scoring``) reproduces the pooled agreement, the drift and the
  accuracy delta, and its approximate answers are the cell's scored answers; the delta also
  equals the difference of the two cells' own ``accuracy`` (the ``cache: none`` cell is the
  exact path from the same seed);
* ``cache: none`` cells carry no ``agree_*`` column; the leaderboard still builds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from harness import results
from harness.model.modelspec import load_model
from harness.report import leaderboard
from harness.run import runner, taskcell
from harness.run.experiment import load_experiment
from harness.run.sweep import run_experiment
from harness.tasks import scoring
from harness.tasks.suite import generate
from harness.train.tokenizer import TextTokenizer
from samplers.base import SampleResult
from samplers.mdlm_semiar import MDLMBlocks, MDLMBlocksConfig

ROOT = Path(__file__).resolve().parents[3]
B, G, BATCH, SEED = 4, 12, 8, 0
TASK = ("brackets", 1, 16, 1234)
AGREE = {"agree_tokens", "agree_logit_drift_max", "agree_logit_drift_mean", "agree_accuracy_delta"}
PARAMS = dict(block_length=B, temperature=0.05, policy="random")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: the box's 2 cores are shared, and 2 threads oversubscribe them."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """(run folder, rows by (steps_per_block, cache), cells by the same key)."""
    tmp = tmp_path_factory.mktemp("task-agree")
    name, level, n, seed = TASK
    cfg = {
        "name": "task-agree",
        "checkpoints": {"mdlm": str(ROOT / "checkpoints" / "tasks-mdlm")},
        "samplers": [
            {
                "name": "blocks",
                "sampler": "mdlm_blocks",
                "checkpoint": "mdlm",
                "params": {
                    **PARAMS,
                    "steps_per_block": [1, 4],
                    "cache": ["none", "prefix", "dual"],
                },
            }
        ],
        "tasks": {"names": [name], "levels": [level], "n": n, "seed": seed},
        "seq_lens": [G],
        "batch_sizes": [BATCH],
        "seeds": [SEED],
        "timing": {"repeats": 1, "warmup": 0},
        "output_dir": str(tmp / "results"),
    }
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLMBENCH_PREDICT", "off")  # no device-peak measurement: predictions NaN
        run_dir = run_experiment(str(path), progress=False)
    _, cells = load_experiment(path)
    rows = {(r["p_steps_per_block"], r["p_cache"]): r for r in results.read_rows(run_dir)}
    assert all(r["status"] == "ok" for r in rows.values()), [r["error"] for r in rows.values()]
    by_key = {(c.params["steps_per_block"], c.params["cache"]): c for c in cells}
    return run_dir, rows, by_key


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.from_file(ROOT / "checkpoints" / "tokenizer" / "tokenizer.json")


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_step_blocks_are_exact_and_the_report_says_so(run, cache):
    _, rows, _ = run
    row = rows[(1, cache)]
    assert row["n_batches"] > 1  # pooled over several prompt lengths
    assert row["agree_tokens"] == 1.0
    assert row["agree_logit_drift_max"] == 0.0 and row["agree_logit_drift_mean"] == 0.0
    assert row["agree_accuracy_delta"] == 0.0
    assert row["accuracy"] == rows[(1, "none")]["accuracy"]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_stale_prompt_kv_disagree_on_tokens_and_logits(run, cache):
    _, rows, _ = run
    row = rows[(4, cache)]
    assert 0.0 < row["agree_tokens"] < 1.0
    assert 0.0 < row["agree_logit_drift_mean"] <= row["agree_logit_drift_max"]
    assert row["agree_logit_drift_max"] > 1.0


def own_batches(tok) -> list[tuple[list, torch.Tensor]]:
    """(examples, (b, P) ids) per sampler call: [BOS] prompt grouped by length, ascending, cut
    into rows of BATCH. Each canvas is P + G: ``mdlm_blocks`` has no ``block_size`` to round G up
    to (its last block is shorter instead)."""
    groups: dict[int, list] = {}
    for ex in generate(*TASK):
        ids = [tok.bos_id, *tok.encode(ex.prompt)]
        groups.setdefault(len(ids), []).append((ex, ids))
    out = []
    for P in sorted(groups):
        for i in range(0, len(groups[P]), BATCH):
            chunk = groups[P][i : i + BATCH]
            out.append(([e for e, _ in chunk], torch.tensor([ids for _, ids in chunk])))
    return out


def own_pass(cfg: MDLMBlocksConfig, model, batches) -> tuple[list[torch.Tensor], list[dict]]:
    """The task pass by hand: plan every batch from one generator, then execute them in order;
    every call's (mask before it, logits) recorded."""
    sampler = MDLMBlocks(cfg)
    gen = torch.Generator().manual_seed(SEED)
    with torch.inference_mode():
        plans = [
            sampler.plan(model, batch_size=len(e), seq_len=p.shape[1] + G, generator=gen, prompt=p)
            for e, p in batches
        ]
        tokens, logs = [], []
        for plan in plans:
            log: dict = {}
            sampler.on_step = lambda j, i, m, lg, log=log: log.__setitem__((j, i), (m, lg))
            tokens.append(sampler.execute(model, plan, generator=gen).tokens)
            logs.append(log)
    return tokens, logs


def own_answers(batches, tokens, tok) -> list[tuple[str, str, bool]]:
    """(id, prediction, correct) per example, scored with harness.tasks.scoring."""
    out = []
    for (examples, prompt), tk in zip(batches, tokens, strict=True):
        for ex, row in zip(examples, tk[:, prompt.shape[1] :], strict=True):
            pred = scoring.predict_answer(tok.decode(row.tolist()))
            out.append((ex.id, pred, scoring.score(ex.task, pred, ex.answer)))
    return out


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_the_report_equals_an_independent_replay_and_scoring(run, tok, cache):
    run_dir, rows, cells = run
    row, cell = rows[(4, cache)], cells[(4, cache)]
    model, _ = load_model(cell.ckpt.path, cell.model_cfg, 0, "cpu")
    batches = own_batches(tok)
    assert len(batches) == row["n_batches"]
    approx, logs_a = own_pass(
        MDLMBlocksConfig(steps_per_block=4, cache=cache, **PARAMS), model, batches
    )
    exact, logs_e = own_pass(MDLMBlocksConfig(steps_per_block=4, **PARAMS), model, batches)
    ans_a, ans_e = own_answers(batches, approx, tok), own_answers(batches, exact, tok)
    acc_a = sum(ok for *_, ok in ans_a) / len(ans_a)
    acc_e = sum(ok for *_, ok in ans_e) / len(ans_e)
    # the replay's approximate answers are the cell's scored answers, the exact ones the none cell's
    scored = [json.loads(x) for x in (run_dir / row["answers_file"]).read_text().splitlines()]
    assert sorted((r["id"], r["prediction"], r["correct"]) for r in scored) == sorted(ans_a)
    assert (acc_a, acc_e) == (row["accuracy"], rows[(4, "none")]["accuracy"])
    assert acc_a != acc_e  # this seed: the stale cache changes some verdicts
    assert row["agree_accuracy_delta"] == acc_a - acc_e
    same = sum(
        int((a[:, p.shape[1] :] == e[:, p.shape[1] :]).sum())
        for (_, p), a, e in zip(batches, approx, exact, strict=True)
    )
    positions = sum(p.shape[0] * G for _, p in batches)
    assert row["agree_tokens"] == same / positions
    drift = []
    for la, le in zip(logs_a, logs_e, strict=True):
        for key in sorted(le):
            if key in la:
                masked = le[key][0]
                d = (la[key][1] - le[key][1]).abs()[..., : model.config.mask_id]  # mask id = V − 1
                drift.append(float(d[masked].max()) if masked.any() else 0.0)
    assert row["agree_logit_drift_max"] == max(drift)
    assert row["agree_logit_drift_mean"] == pytest.approx(sum(drift) / len(drift), rel=1e-12)


def test_exact_cells_carry_no_agreement_columns_and_the_leaderboard_builds(run):
    run_dir, rows, _ = run
    for (_, cache), row in rows.items():
        got = {k for k in row if k.startswith("agree_")}
        assert got == (set() if cache == "none" else AGREE), (cache, got)
    df = results.load_results(run_dir)
    assert df.loc[df["p_cache"] == "none", "agree_tokens"].isna().all()
    _, _, table = leaderboard.write_leaderboard(run_dir, plot=False)
    assert len(table) == 1 and not math.isnan(table["aup"].iloc[0])


def test_a_replay_that_differs_from_the_scored_answers_is_warned_about(run, tok, capsys):
    _, rows, cells = run
    cell = cells[(1, "prefix")]
    model, _ = load_model(cell.ckpt.path, cell.model_cfg, 0, "cpu")
    examples = taskcell.load_examples(cell)
    batches = taskcell.prompt_batches(examples, tok, BATCH, gen=G, block=taskcell.block_size(cell))
    answers = []
    for b in batches:  # a canvas that is not what the sampler gives from this seed
        canvas = torch.cat([b.prompt, torch.full((b.size, b.gen_len), 7)], dim=1)
        answers.append(SampleResult(canvas, nfe_denoise=1, nfe_total=1, token_forwards=0))
    cols = runner.task_agreement_columns(cell, model, batches, answers, tok)
    assert set(cols) == AGREE and cols["agree_tokens"] == rows[(1, "prefix")]["agree_tokens"]
    assert "did not reproduce the scored answers" in capsys.readouterr().err
