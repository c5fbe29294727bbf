"""Task training in the loop: config fields, earlier configs unchanged, shipped task configs, and
tiny end-to-end runs (stand-in suite injected) whose logged accuracy describes the shipped weights.
"""

from __future__ import annotations

import csv
import json
import lzma
from pathlib import Path

import pytest
import torch

from dlmcore.configio import ConfigError
from harness.model.checkpoints import load_dlmbench_checkpoint
from harness.tasks.suite import TASKS
from harness.train.corpus import is_validation
from harness.train.loop import (
    TASK_FIELDS,
    TrainConfig,
    config_hash,
    load_config,
    load_data,
    load_tasks,
    train,
    validate_tasks,
)
from harness.train.tokenizer import REPO_ROOT, TextTokenizer
from tests.harness.train.fake_tasks import fake_suite

SHIPPED = {"mdlm": "mdlm", "bd3lm-b4": "bd3lm", "esolm": "esolm", "ar": "ar"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_earlier_configs_keep_the_hash_their_shipped_checkpoint_recorded(name):
    cfg = load_config(f"configs/train/{name}.yaml")
    doc = json.loads((REPO_ROOT / "checkpoints" / name / "config.json").read_text())
    assert config_hash(cfg) == doc["training"]["config_hash"]
    assert all(getattr(cfg, k) == v for k, v in TASK_FIELDS.items())  # data: corpus etc.


def test_task_field_problems_are_reported_together(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        "name: x\nfamily: ar\ndata: mix\ntask_fraction: 0.01\ntasks: [ad, copy]\n"
        "task_levels: [1, 5]\ntask_val_per: 0\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(p)
    probs = e.value.problems
    assert any("'task_fraction' is 0.01" in q and "0 task rows" in q for q in probs)
    assert any("'ad'" in q and "add" in q for q in probs)  # did-you-mean from the registry
    assert any("[5]" in q and "'copy'" in q and "[1, 2, 3]" in q for q in probs)
    assert any("'task_val_per' is 0" in q for q in probs)
    assert len(probs) == 4
    with pytest.raises(ConfigError, match="task_decode.*left_to_right"):
        load_config(p, ["task_decode=random"])
    p.write_text("name: x\nfamily: ar\ntasks: [add]\n")
    with pytest.raises(ConfigError, match="'tasks' is set but 'data' is 'corpus'"):
        load_config(p)


TASK_CONFIGS = {"tasks-ar": "ar", "tasks-mdlm": "mdlm", "tasks-esolm": "esolm",
                "tasks-bd3lm-b4": "bd3lm-b4"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TASK_CONFIGS))
def test_shipped_task_configs_load_start_from_the_shipped_model_and_fit(name):
    path = f"configs/train/{name}.yaml"
    cfg = load_config(path)
    head = Path(path).read_text().split("\n")[:6]
    assert any(f"python -m harness.train {path}" in line for line in head)
    assert any("Takes:" in line for line in head)
    assert cfg.name == name and cfg.data == "mix" and cfg.seq_len == 64
    assert cfg.init_from == f"checkpoints/{TASK_CONFIGS[name]}"
    src = json.loads((REPO_ROOT / cfg.init_from / "config.json").read_text())["model"]
    assert src["family"] == cfg.family and src["block_size"] == cfg.block_size
    small = load_config(path, ["task_pool_per=3", "task_val_per=2"])
    tasks = load_tasks(small, TextTokenizer.from_file())  # raises if a level does not fit
    assert tasks.val.rows.shape[1] == 64 and len(tasks.val.examples) == 2 * 7 * 2


STAGED = {  # config → (family, the checkpoint it starts from, tasks it adds to the default seven)
    "tasks-mdlm-l1": ("mdlm", "tasks-mdlm", ()),
    "tasks-esolm-l1": ("esolm", "tasks-esolm", ()),
    "tasks-bd3lm-b4-l1": ("bd3lm", "tasks-bd3lm-b4", ()),
    "tasks-mdlm-shuffle": ("mdlm", "tasks-mdlm-l1", ("shuffle",)),
    "tasks-esolm-shuffle": ("esolm", "tasks-esolm-l1", ("shuffle",)),
    "tasks-ar-shuffle": ("ar", "tasks-ar", ("shuffle",)),
}


@pytest.mark.parametrize("name", sorted(STAGED))
def test_staged_task_configs_chain_shipped_checkpoints_and_fit_level_1(name):
    """Stages 2 and 3 (docs/training-tasks.md): level 1 only at L = 32, task rows only, from a
    shipped checkpoint of the same family; stage 3 names shuffle explicitly."""
    family, parent, extra = STAGED[name]
    path = f"configs/train/{name}.yaml"
    cfg = load_config(path)
    head = Path(path).read_text().split("\n")[:8]
    assert any(f"python -m harness.train {path}" in line for line in head)
    assert (cfg.name, cfg.family, cfg.data, cfg.seq_len) == (name, family, "tasks", 32)
    assert cfg.task_levels == (1,) and cfg.init_from == f"checkpoints/{parent}"
    src = json.loads((REPO_ROOT / cfg.init_from / "config.json").read_text())["model"]
    assert src["family"] == cfg.family
    assert set(cfg.tasks or ()) - set(TASKS.names()) == set()
    assert tuple(t for t in (cfg.tasks or ()) if t == "shuffle") == extra
    small = load_config(path, ["task_pool_per=3", "task_val_per=2"])
    tasks = load_tasks(small, TextTokenizer.from_file())  # raises if a level-1 row does not fit
    assert tasks.val.rows.shape[1] == 32 and len(tasks.val.examples) == 2 * (7 + len(extra))


# ---------------------------------------------------------------------------------------------
# Tiny end-to-end runs
# ---------------------------------------------------------------------------------------------

WORDS = "the a cat dog sat ran on under mat tree house big small red blue and".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    g = torch.Generator().manual_seed(0)
    docs, i = [], 0
    while len(docs) < 60 or sum(is_validation(x["id"]) for x in docs) < 2:
        text = " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (40,), generator=g))
        docs.append({"id": f"gen/doc/{i:04d}", "source": "gen", "title": "doc", "text": text})
        i += 1
    path = d / "corpus.jsonl.xz"
    path.write_bytes(lzma.compress("".join(json.dumps(x) + "\n" for x in docs).encode()))
    return path


def tiny_cfg(tmp_path, corpus, family, **kw) -> TrainConfig:
    extra = {"block_size": 4, "clip_min": 0.45, "clip_max": 0.95} if family == "bd3lm" else {}
    base = dict(name="run", family=family, model_size="tiny", seq_len=28, batch_size=8,
                steps=4, warmup_steps=1, val_every=2, val_rows=4, val_batch_size=4, log_every=2,
                corpus=str(corpus), out_dir=str(tmp_path / "out"), threads=1, data="mix",
                task_fraction=0.5, task_pool_per=20, task_val_per=3)  # fmt: skip
    return TrainConfig(**{**base, **extra, **kw})


@pytest.mark.parametrize("family", ["bd3lm", "esolm"])
def test_task_run_logs_accuracy_per_cell_and_ships_what_it_measured(
    family, corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv("DLMBENCH_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg(tmp_path, corpus, family)
    metrics = train(cfg, "cmd", suite_fn=fake_suite)
    out = tmp_path / "out" / "run"
    with open(out / "train_log.csv") as f:
        log = list(csv.DictReader(f))
    cells = ["acc:echo:1", "acc:echo:2", "acc:twice:1", "acc:twice:2"]
    assert list(log[0])[-6:] == ["task_val_nll", "task_acc", *cells]
    val_rows = [r for r in log if r["task_acc"]]
    assert [r["step"] for r in val_rows] == ["2", "4", "4"]
    acc = metrics["task_accuracy"]
    assert acc["n"] == 12 and set(acc["per_cell"]) == {c[4:] for c in cells}
    assert float(val_rows[-1]["task_acc"]) == acc["overall"]
    # Oracle: the loaded (fp16-stored) checkpoint reproduces the recorded task metrics.
    loaded = load_dlmbench_checkpoint(out).model.eval()
    data = load_data(cfg, fake_suite)
    again = validate_tasks(loaded, data.tasks, cfg)
    assert again["accuracy"].summary() == acc
    assert again["task_val_nll"].nll == pytest.approx(metrics["task_val_nll"], rel=1e-6)
    # The held-out ids never appear in the training pool of the run.
    assert not {e.id for e in data.tasks.val.examples} & {e.id for e in data.tasks.train.examples}


# ---------------------------------------------------------------------------------------------
# Conditional training + greedy decoding solve held-out problems (every family)
# ---------------------------------------------------------------------------------------------


def copy_rows(pairs: list[tuple[int, int]]) -> torch.Tensor:
    """Rows [BOS a b SEP | a b EOS EOS] of length 8 (V = 33: BOS = EOS = 0, SEP = 31, m = 32)."""
    x = torch.zeros(len(pairs), 8, dtype=torch.long)
    for i, (a, b) in enumerate(pairs):
        x[i, 1:6] = torch.tensor([a, b, 31, a, b])
    return x


@pytest.mark.parametrize("family", ["ar", "mdlm", "bd3lm", "esolm"])
def test_prompt_conditioned_training_solves_held_out_copy_problems(family):
    """100 steps on 84 of the 100 (a, b) pairs; greedy decoding then copies most of the 16
    held-out pairs exactly (before training: none)."""
    import harness.train.objectives as obj
    from harness.train.taskeval import answer_ids, greedy_decode
    from tests.conftest import tiny_model

    pairs = [(a, b) for a in range(1, 11) for b in range(1, 11)]
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(0)).tolist()
    val, train_pairs = [pairs[i] for i in perm[:16]], [pairs[i] for i in perm[16:]]
    xv, xt = copy_rows(val), copy_rows(train_pairs)
    kw = {"block_size": 4} if family == "bd3lm" else {}
    ocfg = obj.ObjectiveConfig(family, clip_min=0.45, clip_max=0.95, resample=True, **kw)
    model = tiny_model(family, seed=0, **kw)

    def accuracy() -> float:
        z, _ = greedy_decode(model.eval(), xv, torch.full((16,), 4), eos_id=0)
        got = answer_ids(z, torch.full((16,), 4), 32, 0)
        return sum(g == list(v) for g, v in zip(got, val, strict=True)) / 16

    assert accuracy() <= 0.125
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        idx = torch.randint(0, len(xt), (32,), generator=gen)
        loss = obj.OBJECTIVES[family](model, xt[idx], gen, ocfg, True,
                                      prompt_len=torch.full((32,), 4)).loss  # fmt: skip
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    assert accuracy() >= 0.75
