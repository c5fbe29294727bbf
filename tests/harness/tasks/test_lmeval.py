"""The lm-eval bridge end to end on a two-example local task (no download).

The test writes an lm-eval task YAML and its two-line JSONL dataset, loads them through lm-eval's
TaskManager, answers the prompts with a stand-in generator (one right, one wrong), cuts and
scores the answers with dlmbench's scorer, and checks that lm-eval's own metric agrees.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from harness.tasks import lmeval, scoring
from harness.tasks.lmeval import LmEvalError, load_task, open_task
from harness.tasks.suite import Example

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: {output_type}
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n", "Q:"]
  max_gen_toks: 8
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
DOCS = [
    '{"question": "2+2", "answer": "4"}',
    '{"question": "capital of France", "answer": "Paris"}',
]


@pytest.fixture
def task_dir(tmp_path: Path, monkeypatch) -> Path:
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = tmp_path / "lm_tasks"
    d.mkdir()
    data = d / "tiny.jsonl"
    data.write_text("\n".join(DOCS) + "\n")
    for name, kind in (("dlmbench_tiny", "generate_until"), ("dlmbench_ll", "loglikelihood")):
        text = TASK_YAML.format(name=name, data=data, cache=tmp_path / "hf", output_type=kind)
        (d / f"{name}.yaml").write_text(text)
    return d


def test_a_local_task_end_to_end(task_dir: Path):
    task = open_task("dlmbench_tiny", include_path=task_dir)
    assert list(task.examples) == [
        Example("lmeval:dlmbench_tiny", 0, "Q: 2+2\nA:", "4", "dlmbench_tiny/0"),
        Example("lmeval:dlmbench_tiny", 0, "Q: capital of France\nA:", "Paris", "dlmbench_tiny/1"),
    ]
    assert task.until == ("\n", "Q:") and task.max_gen_toks == 8

    def generate(prompt: str) -> str:  # stands in for a timed dlmbench sampler
        return {"Q: 2+2\nA:": "4\nQ: 3+3", "Q: capital of France\nA:": "Lyon Q: next"}[prompt]

    predictions = [scoring.predict_answer(generate(e.prompt), task.until) for e in task.examples]
    assert predictions == ["4", "Lyon "]
    correct = [scoring.score(e.task, p, e.answer) for e, p in zip(task.examples, predictions)]
    assert correct == [True, False]
    assert scoring.accuracy_ci(correct)[0] == 0.5
    # lm-eval's own metric on the same predictions: filters, process_results, aggregation
    assert task.metrics(predictions) == {"none": {"exact_match": 0.5}}
    assert task.metrics(["4", "Paris"]) == {"none": {"exact_match": 1.0}}  # re-scorable
    with pytest.raises(LmEvalError, match="got 1 predictions"):
        task.metrics(["4"])


def test_load_task_and_limit(task_dir: Path):
    exs = load_task("dlmbench_tiny", include_path=task_dir, limit=1)
    assert [e.answer for e in exs] == ["4"]
    assert scoring.score(exs[0].task, " 4 ", "4")  # lm-eval examples: strip normalisation


def test_unusable_tasks_are_named(task_dir: Path):
    with pytest.raises(LmEvalError, match="Did you mean: dlmbench_tiny"):
        load_task("dlmbench_tinny", include_path=task_dir)
    with pytest.raises(LmEvalError, match="is a loglikelihood task; .* only generate_until"):
        load_task("dlmbench_ll", include_path=task_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("dlmbench_tiny", include_path=task_dir / "nowhere")
    with pytest.raises(LmEvalError, match="limit must be a positive integer"):
        load_task("dlmbench_tiny", include_path=task_dir, limit=0)


def test_offline_variables_are_restored(task_dir: Path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with lmeval._offline(True):
        assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in os.environ and os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_without_lm_eval_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)
    with pytest.raises(LmEvalError, match=r"pip install 'dlmbench\[tasks\]'"):
        load_task("anything", include_path=None)
