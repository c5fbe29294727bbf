"""Hugging Face models (``hf:`` specs) through the experiment config, the runner, task cells and
the quality stage.

Tiny local models (``harness/model/hf/tiny.py``: ModernBERT with a WordLevel tokenizer,
LLaDA- and Dream-style remote code) stand in for the real checkpoints; nothing is downloaded.
The oracles are independent of the code under test: the model's own parameter count for the
FLOPs, ``AutoTokenizer`` called directly for the prompt ids and the decoded answers, and
hand-worked token ids for BOS, chat template and stop handling.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from dlmcore.configio import ConfigError
from harness import cli, results
from harness.model import modelspec
from harness.model.hf import tiny as H
from harness.model.hf.tokenizer import HFTextTokenizer, text_tokenizer
from harness.quality.evaluators import decode_ids, load_text_tokenizer
from harness.quality.stage import decode_samples, score_run
from harness.run import runner, taskcell
from harness.run.experiment import load_experiment, run_id_for
from harness.tasks.scoring import predict_answer
from samplers.base import SampleResult

ROOT = Path(__file__).resolve().parents[3]
HF_CONFIGS = sorted((ROOT / "configs" / "hf").glob("*.yaml"))
CLS, SEP = 1, 2  # the tiny tokenizer's [CLS] / [SEP]; config.json's eos_token_id is [SEP]
CHAT = (
    "[CLS] {% for m in messages %}w60 {{ m['content'] }} [SEP] {% endfor %}"
    "{% if add_generation_prompt %}w61{% endif %}"
)
TASK_LINES = [
    {"prompt": "w5 w6 w7", "answer": "w8"},
    {"prompt": "w9 w10", "answer": "w11"},
    {"prompt": "w12 w13 w14", "answer": "w15"},
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """ModernBERT three ways: plain tokenizer, one that adds [CLS] … [SEP], one with a template."""
    from tokenizers import Tokenizer, processors

    root = tmp_path_factory.mktemp("hfruns")
    mb = H.write_modernbert(root / "mb")
    bos = Path(shutil.copytree(mb, root / "mb_bos"))
    tok = Tokenizer.from_file(str(bos / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)]
    )
    tok.save(str(bos / "tokenizer.json"))
    chat = Path(shutil.copytree(mb, root / "mb_chat"))
    (chat / "chat_template.jinja").write_text(CHAT)
    return {
        "mb": mb,
        "mb_bos": bos,
        "mb_chat": chat,
        "bert_vocab": vocab_only(H.write_bert(root / "bert_vocab")),
        "root": root,
    }


def vocab_only(dst: Path) -> Path:
    """The BERT model at ``dst`` with its tokenizer as a ``vocab.txt``: no ``tokenizer.json``."""
    from transformers import BertTokenizer

    for name in ("tokenizer.json", "tokenizer_config.json"):
        (dst / name).unlink()
    words = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"] + [f"w{i}" for i in range(4, H.MASK_ID)]
    (dst / "vocab.txt").write_text("\n".join([*words, "[MASK]"]) + "\n")
    BertTokenizer(vocab_file=str(dst / "vocab.txt")).save_pretrained(dst)
    (dst / "tokenizer.json").unlink()
    return dst


def write_yaml(path: Path, **cfg) -> Path:
    base = {
        "name": "hf",
        "samplers": [{"sampler": "mdlm", "params": {"num_steps": 4}}],
        "seq_lens": [12],
        "batch_sizes": [2],
        "seeds": [0],
        "timing": {"mode": "full", "repeats": 1, "warmup": 1},
        "output_dir": str(path.parent / "results"),
    }
    path.write_text(yaml.safe_dump({**base, **cfg}))
    return path


def run_dir_of(path: Path) -> Path:
    exp, cells = load_experiment(path)
    return Path(exp.output_dir) / run_id_for(exp, cells)


def auto_tokenizer(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


# ---- a whole run ------------------------------------------------------------------------------


def test_dlmbench_run_of_an_hf_modernbert_gives_ok_rows_with_labelled_costs(dirs, tmp_path):
    from transformers import AutoModelForMaskedLM

    path = write_yaml(tmp_path / "exp.yaml", checkpoints={"mb": {"path": f"hf:{dirs['mb']}"}})
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    df = results.load_results(run_dir_of(path))
    (r,) = df.to_dict("records")
    assert (r["status"], r["family"], r["model_size"]) == ("ok", "mdlm", "hf-modernbert-d32xN2")
    assert r["vocab_size"] == H.VOCAB and r["nfe_denoise"] >= 1
    # oracle: the model's own parameters (tied head counted once), not the safetensors header
    own = AutoModelForMaskedLM.from_pretrained(str(dirs["mb"]), local_files_only=True)
    n_params = sum(p.numel() for p in own.parameters())
    b, L = 2, 12
    assert r["token_forwards"] == r["nfe_total"] * L  # every mdlm call feeds the whole canvas
    assert r["flops_linear"] == 2 * n_params * b * r["token_forwards"]
    assert r["flops_attention"] == 4 * 32 * 2 * b * r["attn_pairs"]  # 4·d·N per pair
    assert r["flops_analytic"] == r["flops_linear"] + r["flops_attention"]
    assert r["bytes_weights"] == n_params * 4 * r["nfe_total"]  # fp32 weights read per call
    assert math.isnan(r["bytes_analytic"]) and math.isnan(r["predicted_s"])
    assert math.isnan(r["predicted_ratio"])
    assert r["flops_method"].startswith("hf: 2*params") and r["weights_dtype"] == "float32"
    assert r["cache_bytes_analytic"] == b * L * H.VOCAB * 4  # the p_x0 cache
    tokens = results.load_samples(run_dir_of(path), r["cell_id"])
    assert tokens.shape == (b, L) and not (tokens == H.MASK_ID).any()
    assert int(tokens.min()) >= 0 and int(tokens.max()) < H.VOCAB


def test_memory_estimate_of_an_hf_cell_counts_its_weights_and_full_logits(dirs, tmp_path):
    path = write_yaml(tmp_path / "exp.yaml", checkpoints={"mb": {"path": f"hf:{dirs['mb']}"}})
    _, (cell,) = load_experiment(path)
    n = cell.model_cfg.n_params
    b, L, V, d = 2, 12, H.VOCAB, 32
    weights, cache = n * 4, b * L * V * 4
    activations = b * (L * 8 * d * 4 + L * 4 * V)  # hidden states + fp32 logits of every row
    assert runner.cell_peak_bytes(cell) == weights + cache + activations
    assert runner.cell_peak_bytes(cell, weights=False) == cache + activations
    (est,) = runner.estimate(*load_experiment(path))
    assert math.isnan(est["predicted_s"]) and est["peak_mem_gb_est"] > 0


def test_safetensors_header_count_equals_the_loaded_parameters(dirs):
    from transformers import AutoModelForMaskedLM

    cfg = modelspec.hf_config(f"hf:{dirs['mb']}")
    own = AutoModelForMaskedLM.from_pretrained(str(dirs["mb"]), local_files_only=True)
    assert cfg.n_params == sum(p.numel() for p in own.parameters())


# ---- the experiment config ---------------------------------------------------------------------


def test_misplaced_and_bad_hf_fields_are_reported_together(dirs, tmp_path):
    mb = f"hf:{dirs['mb']}"
    path = write_yaml(
        tmp_path / "bad.yaml",
        checkpoints={
            "a": {"path": mb, "vocab_size": 64},
            "b": {"path": str(tmp_path), "hf": {"dtype": "bfloat16"}},
            "c": {"path": "random:tiny", "vocab_size": 16, "hf": {"mask_id": 3}},
            "d": {"path": mb, "hf": {"trust_remote_cod": True}},
            "e": {"path": mb, "hf": {"chat_template": True}},
        },
        samplers=[{"sampler": "mdlm", "checkpoint": k} for k in "abcde"],
    )
    assert cli.main(["validate", str(path)]) == 2
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    msg = str(e.value)
    assert "checkpoints.a: 'vocab_size'/'model' apply to random: specs only" in msg
    assert "checkpoints.b: 'hf' options apply to hf: specs only" in msg
    assert "checkpoints.c: 'hf' options apply to hf: specs only" in msg
    assert "hf.trust_remote_cod" in msg and "Did you mean: trust_remote_code" in msg
    assert "checkpoints.e:" in msg and "holds no chat template" in msg


def test_seq_len_past_the_models_positions_is_refused(dirs, tmp_path):
    path = write_yaml(
        tmp_path / "long.yaml",
        checkpoints={"mb": {"path": f"hf:{dirs['mb']}"}},
        seq_lens=[64, 129],
    )
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    assert "seq_len 129 exceeds the 128 positions" in str(e.value)
    assert "seq_len 64" not in str(e.value)


@pytest.mark.parametrize("path", HF_CONFIGS, ids=lambda p: p.stem)
def test_validate_names_the_missing_directory_and_its_download(path, capsys):
    doc = yaml.safe_load(path.read_text())
    (ck,) = doc["checkpoints"].values()
    directory, hub = ck["path"][len("hf:") :], ck["hf"]["hub_id"]
    if Path(directory).exists():
        pytest.skip(f"{directory} exists on this machine")
    assert path.read_text().startswith(f"# Command:  dlmbench run configs/hf/{path.name}\n")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"huggingface-cli download {hub} --local-dir {directory}" in err
    assert f"directory {directory} does not exist" in err
    assert "Traceback" not in err and err.startswith("error: ")


RUNNABLE = {  # config → (checkpoint key, tiny model of the same kind)
    "llada_8b_instruct": ("llada", "llada"),
    "llada2_1_mini": ("llada2", "llada2"),
    "dream_v0_instruct_7b": ("dream", "dream"),
    "modernbert_large_chat": ("bert", "mb"),
    "diffusiongemma_26b_a4b_it": ("gemma", "gemma"),
}


def test_the_configs_are_valid_but_for_their_weights(dirs, capsys):
    """Pointed at a tiny local model of its kind, on the CPU, each runnable config validates."""
    assert {p.stem for p in HF_CONFIGS} == set(RUNNABLE)
    H.write_llada_style(dirs["root"] / "llada")
    H.write_dream_style(dirs["root"] / "dream")
    H.write_diffusion_gemma(dirs["root"] / "gemma")
    H.write_llada2_style(dirs["root"] / "llada2")
    for stem, (key, tiny) in RUNNABLE.items():
        hf = yaml.safe_load((ROOT / "configs" / "hf" / f"{stem}.yaml").read_text())
        over = [
            f"checkpoints.{key}.path=hf:{dirs['root'] / tiny}",
            "device=cpu",
            "dtype=float32",
            "seq_lens=[64]",
        ]
        if "mask_id" in hf["checkpoints"][key]["hf"]:
            over.append(f"checkpoints.{key}.hf.mask_id={H.MASK_ID}")
        assert cli.main(["validate", str(ROOT / "configs" / "hf" / f"{stem}.yaml"), *over]) == 0
        assert capsys.readouterr().out.startswith("OK: ")


# ---- the model's own tokenizer -----------------------------------------------------------------


def test_tokenizer_adds_bos_only_if_it_has_one_and_applies_the_chat_template(dirs):
    plain = text_tokenizer(modelspec.hf_config(f"hf:{dirs['mb']}"))
    bos = text_tokenizer(modelspec.hf_config(f"hf:{dirs['mb_bos']}"))
    chat = text_tokenizer(modelspec.hf_config(f"hf:{dirs['mb_chat']}", {"chat_template": True}))
    assert (plain.bos_id, plain.encode("w5 w6")) == (None, [5, 6])
    assert (bos.bos_id, bos.encode("w5 w6")) == (CLS, [5, 6])  # [SEP] after the text dropped
    assert (chat.bos_id, chat.encode("w5 w6")) == (None, [CLS, 60, 5, 6, SEP, 61])
    assert plain.decode([5, SEP, 63]) == "w5 [SEP] [MASK]"
    assert plain.stops == ("\n", "[SEP]", "<|endoftext|>")


def test_answers_are_cut_at_the_models_eos_text(dirs):
    tok = text_tokenizer(modelspec.hf_config(f"hf:{dirs['mb']}"))
    ex = [taskcell_example("w5", "w7 w8")]
    batch = taskcell.PromptBatch(ex, torch.tensor([[5]]))
    res = SampleResult(
        tokens=torch.tensor([[5, 7, 8, SEP, 9, 10]]), nfe_denoise=1, nfe_total=1, token_forwards=6
    )
    assert taskcell.predictions(batch, res, tok) == ["w7 w8 "]  # "w7 w8 [SEP] w9 w10" cut


def taskcell_example(prompt: str, answer: str):
    from harness.tasks.suite import Example

    return Example(task="jsonl:t", level=0, prompt=prompt, answer=answer, id="t-1")


# ---- task cells --------------------------------------------------------------------------------


def test_task_cells_on_hf_models_keep_the_prompt_and_decode_with_its_tokenizer(dirs, tmp_path):
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps(x) + "\n" for x in TASK_LINES))
    path = write_yaml(
        tmp_path / "task.yaml",
        checkpoints={
            "bos": {"path": f"hf:{dirs['mb_bos']}"},
            "chat": {"path": f"hf:{dirs['mb_chat']}", "hf": {"chat_template": True}},
        },
        samplers=[
            {"sampler": "mdlm", "name": f"m-{k}", "checkpoint": k, "params": {"num_steps": 4}}
            for k in ("bos", "chat")
        ],
        seq_lens=[6],
        tasks={"file": str(task), "n": 3},
    )
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    run_dir = run_dir_of(path)
    df = results.load_results(run_dir)
    assert list(df["status"]) == ["ok", "ok"]
    for r in df.to_dict("records"):
        assert (r["task"], r["n_examples"]) == ("jsonl:t", 3)
        assert 0 <= r["accuracy_lo"] <= r["accuracy"] <= r["accuracy_hi"] <= 1
        assert r["gen_len"] == 6 and not math.isnan(r["flops_analytic"])
        d = dirs["mb_bos"] if r["checkpoint"] == "bos" else dirs["mb_chat"]
        tok = auto_tokenizer(d)
        records = [json.loads(x) for x in (run_dir / r["answers_file"]).read_text().splitlines()]
        assert sorted(x["prompt"] for x in records) == sorted(x["prompt"] for x in TASK_LINES)
        for rec in records:
            if r["checkpoint"] == "bos":
                want = [tok.cls_token_id, *tok.encode(rec["prompt"], add_special_tokens=False)]
            else:
                want = tok.apply_chat_template(
                    [{"role": "user", "content": rec["prompt"]}],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                )
            assert rec["prompt_ids"] == want  # the canvas's prompt positions, unchanged
            assert len(rec["gen_ids"]) == 6 and H.MASK_ID not in rec["gen_ids"]
            text = tok.decode(rec["gen_ids"], skip_special_tokens=False)
            assert rec["prediction"] == predict_answer(text, ("\n", "[SEP]", "<|endoftext|>"))


# ---- the quality stage -------------------------------------------------------------------------


def test_quality_stage_decodes_hf_samples_with_the_models_tokenizer(dirs, tmp_path):
    """The model's tokenizer is a vocab.txt only, which only its AutoTokenizer can read."""
    mb = {"path": f"hf:{dirs['bert_vocab']}", "hf": {"mask_id": H.MASK_ID}}
    path = write_yaml(tmp_path / "exp.yaml", checkpoints={"mb": mb})
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    run_dir = run_dir_of(path)
    (row,) = results.load_results(run_dir).to_dict("records")
    tokens = results.load_samples(run_dir, row["cell_id"])
    cfg = json.loads(row["cell_config"])["model"]["config"]
    texts = decode_samples(row["checkpoint_source"], cfg, Path(cfg["tokenizer"]), tokens)
    tok = auto_tokenizer(dirs["bert_vocab"])
    assert type(tok).__name__ == "BertTokenizer"
    assert texts == [tok.decode(t.tolist(), skip_special_tokens=False) for t in tokens]
    shipped = load_text_tokenizer(ROOT / "checkpoints" / "tokenizer")
    assert texts != decode_ids(shipped, tokens, skip=set())  # control: the wrong vocabulary
    q = score_run(run_dir, "dit:" + str(ROOT / "checkpoints" / "evaluator-ar"))
    assert list(q["quality_status"]) == ["ok"] and q["gen_ppl"].iloc[0] > 1


def test_hf_text_tokenizer_takes_its_eos_from_the_model_config(dirs):
    cfg = modelspec.hf_config(f"hf:{dirs['mb']}", {"eos_id": 7})
    tok = HFTextTokenizer(auto_tokenizer(dirs["mb"]), cfg)
    assert tok.eos_id == 7 and tok.stops == ("\n", "w7", "<|endoftext|>")
