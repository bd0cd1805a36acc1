"""E2E NLG: the official metrics, the LoRA-format data, label masking and smoothing, decoding, Conv1D
merge/unmerge, and a tiny GPT-2 trained end to end through run.py for every method that adapts Conv1D."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, SHARED, compose_cfg, run_cli
from omegaconf import OmegaConf
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers.pytorch_utils import Conv1D

from qpeft import nlg, tables
from qpeft.adapters import get_method, settings_from_config
from qpeft.config import run_spec
from qpeft.data import e2e
from qpeft.errors import QpeftError
from qpeft.tables import e2e as tables_e2e

FIXTURES = Path(__file__).parent / "data" / "e2e_metrics"
E2E_DIR = SHARED / "e2e"


def read_grouped(path: Path) -> list[list[str]]:
    """e2e-metrics' multi-reference format: references of one MR on consecutive lines, a blank line between."""
    groups = [g.splitlines() for g in path.read_text(encoding="utf-8").strip().split("\n\n")]
    return [[line.strip() for line in g if line.strip()] for g in groups]


def official(fixture: str, mteval: str) -> dict[str, float]:
    lines = [
        ln for ln in (FIXTURES / "expected_official.tsv").read_text().splitlines() if not ln.startswith("#")
    ]
    rows = list(csv.DictReader(lines, delimiter="\t"))
    row = next(r for r in rows if r["fixture"] == fixture and r["mteval"] == mteval)
    names = {"BLEU": "bleu", "NIST": "nist", "METEOR": "meteor", "ROUGE_L": "rouge_l", "CIDEr": "cider"}
    return {names[k]: float(v) for k, v in row.items() if k in names}


@pytest.fixture(scope="module")
def e2e_dir() -> Path:
    if not (E2E_DIR / "valid.txt").exists():
        pytest.skip(f"E2E data not found at {E2E_DIR}: set QPEFT_SHARED_DATA to the shared data folder")
    return E2E_DIR


# ---------------------------------------------------------------- metrics


def fixture_files(fixture: str) -> tuple[list[str], list[list[str]]]:
    """(outputs, references) of a fixture; `short` is `lora` with an empty, a one-token and a three-token output
    in place of its first three outputs (the references are lora's)."""
    refs = read_grouped(FIXTURES / f"{'lora' if fixture == 'short' else fixture}_refs.txt")
    outputs = (FIXTURES / f"{fixture}_outputs.txt").read_text(encoding="utf-8").splitlines()
    assert len(refs) == len(outputs) and min(map(len, refs)) >= 3
    return outputs, refs


@pytest.mark.parametrize("fixture", ["coco", "lora", "short"])
def test_metrics_match_the_official_script(fixture):
    """All five metrics equal what tuetschek/e2e-metrics `measure_scores.py -p` printed for the same files
    (4 decimals; tests/data/e2e_metrics/README.md says how those were obtained)."""
    assert nlg.java_available(), "METEOR, ROUGE-L and CIDEr need Java: apt-get install default-jre-headless"
    outputs, refs = fixture_files(fixture)
    ours = nlg.score(outputs, refs)
    expected = official(fixture, "python")
    for name in nlg.METRICS:
        assert ours[name] == pytest.approx(expected[name], abs=5.1e-5), (name, ours[name], expected[name])
    if fixture == "short":
        return  # the Perl MT-Eval was not run on it
    # the Perl MT-Eval gives the same BLEU; its NIST length penalty weighs MRs with more references more
    perl = official(fixture, "perl")
    assert ours["bleu"] == pytest.approx(perl["bleu"], abs=5.1e-5)
    assert abs(ours["nist"] - perl["nist"]) < 0.04


# BLEU and NIST as the script's own pymteval code returned them (full precision; README.md: how)
SCRIPT_BLEU_NIST = {
    "coco": (0.7202928494322162, 7.788887609555574),
    "lora": (0.6254077656879358, 8.158157350720638),
    "short": (0.5881057425605523, 7.673650721165493),
}


@pytest.mark.parametrize("fixture", sorted(SCRIPT_BLEU_NIST))
def test_bleu_and_nist_equal_the_script_to_full_precision(fixture):
    """Also on degenerate outputs (`short`: an empty line, one token, three tokens), where the script counts an
    empty output as one token and adds negative n-gram totals for outputs shorter than n (sacrebleu, which
    qpeft used before, floors them at 0: it gave BLEU 0.5849 and NIST 7.6707 here, the script 0.5881 and
    7.6737)."""
    outputs, refs = fixture_files(fixture)
    if fixture == "short":
        assert outputs[0] == "" and len(outputs[1].split()) == 1 and len(outputs[2].split()) == 3
    bleu, nist = SCRIPT_BLEU_NIST[fixture]
    assert nlg.bleu(outputs, refs) == pytest.approx(bleu, rel=1e-13, abs=0)
    assert nlg.nist(outputs, refs) == pytest.approx(nist, rel=1e-13, abs=0)


def test_nist_clips_against_all_references_and_bleu_is_corpus_level():
    """Hand-computed: one MR, hypothesis 'a b', references 'a c' and 'b c' (information from 4 reference
    words: info(a) = info(b) = log2(4/1) = 2, bigrams none matched); BLEU: no bigram match, so the script's
    floors decide it: (1 * 1e-15 / 1 * 1e-15 / 1e-9 * 1e-15 / 1e-9) ** (1/4) = 10 ** -6.75."""
    assert nlg.nist(["a b"], [["a c", "b c"]]) == pytest.approx((2 + 2) / 2)
    assert nlg.bleu(["a b"], [["a c", "b c"]]) == pytest.approx(10**-6.75, rel=1e-9)
    assert nlg.bleu(["the cat sat on the mat"], [["the cat sat on the mat", "x"]]) == pytest.approx(1.0)
    assert nlg.mteval_tokens("") == [""]  # the script's count: one (empty) token
    assert nlg.mteval_tokens("It's 3.5, OK.") == ["it's", "3.5", ",", "ok", "."]


def test_score_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="reference groups"):
        nlg.score(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="at least one reference"):
        nlg.score(["a"], [[]])


# ---------------------------------------------------------------- data


def test_reader_counts_and_groups(e2e_dir):
    valid = e2e.read_lora_file(e2e_dir / "valid.txt")
    test = e2e.read_lora_file(e2e_dir / "test.txt")
    assert len(valid) == 4672 and len(test) == 4693
    mrs, refs = e2e.group_by_mr(valid)
    assert len(mrs) == 547 and sum(map(len, refs)) == 4672
    assert len(e2e.group_by_mr(test)[0]) == 630
    assert mrs[0] == "name : Alimentum | area : city centre | family friendly : no"
    assert refs[0][0] == "There is a place in the city centre , Alimentum , that is not family - friendly ."


def test_hub_format_converts_to_the_lora_files(e2e_dir):
    """The original E2E text (e2e-metrics' copy of the first dev references) tokenised as LoRA's files are,
    and a Hub MR string mapped to the LoRA MR format."""
    lora_refs = {ref.strip() for _, ref in e2e.read_lora_file(e2e_dir / "valid.txt")}
    originals = [r for g in read_grouped(FIXTURES / "coco_refs.txt") for r in g]
    assert len(originals) == 137
    converted = [e2e.to_lora_format("name[Alimentum]", r)[1] for r in originals]
    assert all(c.endswith(" ") for c in converted)
    assert sum(c.strip() in lora_refs for c in converted) == 137
    mr, _ = e2e.to_lora_format("name[Alimentum], area[city centre], familyFriendly[no]", "x")
    assert mr == "name : Alimentum | area : city centre | family friendly : no"
    mr, _ = e2e.to_lora_format(
        "name[Cotto], eatType[coffee shop], priceRange[£20-25], near[The Portland Arms]", "x"
    )
    assert mr == "name : Cotto | Type : coffee shop | price : £ 20 - 25 | near : The Portland Arms"


def test_a_missing_split_names_the_settings(e2e_dir):
    task = OmegaConf.create(
        {"data_dir": str(e2e_dir), "hub_fallback": False, "files": {"train": "train.txt"}}
    )
    with pytest.raises(QpeftError, match="task.hub_fallback=true"):
        e2e.read_split(task, "train")


def tiny_tokenizer(e2e_dir: Path):
    pairs = e2e.read_lora_file(e2e_dir / "valid.txt")
    return e2e.word_tokenizer([f"{m} {r}" for m, r in pairs], 1024)


def peft_method(values: dict):
    """The Method object for adapter settings `values` (name and targets filled in)."""
    values = {"name": "test", "targets": ["c_attn"], **values}
    return get_method(values["method"])(settings_from_config(values))


def tiny_gpt2(vocab: int = 1024) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config)


def test_loss_only_on_reference_tokens_with_label_smoothing(e2e_dir, tmp_path):
    """The Trainer's loss (label smoothing 0.1, plain and peft-wrapped GPT-2) equals label-smoothed cross
    entropy computed here on the reference tokens and the closing <|endoftext|> only."""
    tok = tiny_tokenizer(e2e_dir)
    pairs = e2e.read_lora_file(e2e_dir / "valid.txt")[:3]
    rows = [e2e.encode_pair(tok, m, r, 96) for m, r in pairs]
    for (mr, ref), row in zip(pairs, rows):
        prompt = tok.encode(mr, add_special_tokens=False) + [tok.eos_token_id]
        target = tok.encode(ref, add_special_tokens=False) + [tok.eos_token_id]
        assert row["input_ids"] == prompt + target
        assert row["labels"] == [-100] * len(prompt) + target
    batch = e2e.CausalCollator(tok.pad_token_id)(rows)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()

    for wrap in (False, True):
        model = tiny_gpt2()
        if wrap:
            model = peft_method({"method": "lora", "r": 2}).apply(model, ["c_attn"], [], 10)
        args = TrainingArguments(
            output_dir=str(tmp_path), label_smoothing_factor=0.1, use_cpu=True, report_to=[]
        )
        trainer = Trainer(model=model, args=args)
        model.eval()
        with torch.no_grad():
            loss = trainer.compute_loss(model, dict(batch))
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        expected = F.cross_entropy(logits[:, :-1][keep], targets[keep], label_smoothing=0.1)
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- decoding


def test_no_repeat_ngram_counts_generated_tokens_only():
    """A 3-gram of the prompt may be generated; a 3-gram already generated may not be repeated."""
    proc = nlg.NoRepeatGeneratedNGram(3, prompt_length=4)
    ids = torch.tensor([[5, 6, 7, 5, 5, 6]])  # prompt 5 6 7 5, generated 5 6
    scores = proc(ids, torch.zeros(1, 10))
    assert torch.isfinite(scores).all()  # "5 6 7" is in the prompt only: allowed
    ids = torch.tensor([[0, 0, 0, 0, 5, 6, 7, 5, 6]])  # generated 5 6 7 5 6: "5 6 7" again is banned
    scores = proc(ids, torch.zeros(1, 10))
    assert scores[0, 7] == -float("inf") and torch.isfinite(scores[0, :7]).all()


def test_batched_left_padded_generation_equals_one_by_one(e2e_dir):
    """Prompts of different lengths decoded together give what each gives alone (beam search, padding)."""
    tok = tiny_tokenizer(e2e_dir)
    model = tiny_gpt2()
    mrs, _ = e2e.group_by_mr(e2e.read_lora_file(e2e_dir / "valid.txt"))
    prompts = [e2e.prompt_ids(tok, m) for m in mrs[:4]]
    assert len({len(p) for p in prompts}) > 1
    settings = dict(num_beams=3, length_penalty=0.8, no_repeat_ngram_size=4, max_new_tokens=8)
    together = nlg.generate(model, tok, prompts, batch_size=4, **settings)
    alone = [nlg.generate(model, tok, [p], batch_size=1, **settings)[0] for p in prompts]
    assert together == alone and any(together)


def test_clean_output_as_lora_decode():
    assert (
        nlg.clean_output(" The Eagle is a pub . <|endoftext|> junk", "<|endoftext|>")
        == "The Eagle is a pub ."
    )
    assert nlg.clean_output(" A pub .\n\nmore", "<|endoftext|>") == "A pub ."


# ---------------------------------------------------------------- Conv1D merge / unmerge


def conv1d_delta(layer: torch.nn.Module, base: Conv1D) -> torch.Tensor:
    """The adapted layer's weight update, measured through its forward on the identity (Conv1D layout)."""
    eye = torch.eye(base.weight.shape[0])
    with torch.no_grad():
        return layer(eye) - base(eye)


@pytest.mark.parametrize("method", ["lora", "quantum"])
def test_conv1d_merge_and_unmerge(method):
    """Merging folds exactly the update the forward applies into each Conv1D weight; unmerging restores the
    pretrained weight; logits and beam-searched ids agree before and after."""
    model = tiny_gpt2(vocab=64)
    base = copy.deepcopy(model)
    if method == "lora":
        module = peft_method({"method": "lora", "r": 2, "alpha": 8})
        model = module.apply(model, ["c_attn"], [], 10)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)  # LoRA starts at B = 0: give it an update
    else:
        module = peft_method({"method": "quantum", "rank": 2, "layers": 1, "alpha": 8, "init": "uniform"})
        model = module.apply(model, ["c_attn"], [], 10)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.3 * torch.randn_like(p))

    def layer_of(m, i):  # the adapted c_attn of block i, wherever the method's wrapper puts it
        return next(mod for name, mod in m.named_modules() if name.endswith(f"h.{i}.attn.c_attn"))

    model.eval()
    ids = torch.randint(0, 64, (2, 9))
    deltas = []
    for i in range(2):
        w0 = base.transformer.h[i].attn.c_attn
        delta = conv1d_delta(layer_of(model, i), w0)
        assert delta.abs().max() > 1e-3
        deltas.append(delta)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        beams = model.generate(
            input_ids=ids[:, :4], num_beams=3, max_new_tokens=5, do_sample=False, pad_token_id=0
        )
    module.merge(model)
    with torch.no_grad():
        for i in range(2):
            merged = layer_of(model, i)
            weight = merged.base_layer.weight
            torch.testing.assert_close(
                weight - base.transformer.h[i].attn.c_attn.weight, deltas[i], atol=1e-5, rtol=1e-4
            )
        torch.testing.assert_close(model(input_ids=ids).logits, logits, atol=1e-5, rtol=1e-4)
        merged_beams = model.generate(
            input_ids=ids[:, :4], num_beams=3, max_new_tokens=5, do_sample=False, pad_token_id=0
        )
    assert torch.equal(merged_beams, beams)
    module.unmerge(model)
    for i in range(2):
        layer = layer_of(model, i)
        weight = layer.base_layer.weight  # both are peft tuner layers now
        torch.testing.assert_close(weight, base.transformer.h[i].attn.c_attn.weight, atol=1e-6, rtol=0)


def test_oft_and_boft_refuse_conv1d():
    for method, extra in (("oft", {"block_size": 4}), ("boft", {"block_size": 4, "n_butterfly_factor": 1})):
        with pytest.raises(QpeftError, match="Conv1D"):
            peft_method({"method": method, **extra}).apply(tiny_gpt2(), ["c_attn"], [], 10)


# ---------------------------------------------------------------- end to end, and the table

METHODS = ["lora_e2e", "adalora", "quantum", "quantum_taylor", "full", "bitfit"]


@pytest.fixture(scope="module")
def e2e_runs(e2e_dir, tmp_path_factory) -> Path:
    """One local sweep (one process): a tiny GPT-2 trained on 128 pairs of valid.txt per method, decoded on
    the first 4 test MRs with beam search, scored and recorded."""
    out = tmp_path_factory.mktemp("e2e_runs")
    args = [
        "-m",
        "task=e2e/nlg",
        "backbone=tiny_gpt2",
        "protocol=tiny_cpu",
        f"adapter={','.join(METHODS)}",
        f"task.data_dir={e2e_dir}",
        "task.files.train=valid.txt",
        "task.hub_fallback=false",
        "trainer.train_limit=128",
        "trainer.epochs=2",
        "trainer.lr=0.005",
        "trainer.eval_limit=4",
        "trainer.eval_every_epoch=false",
        "trainer.logging_steps=4",
        "trainer.threads=1",
        "experiment_name=e2e_gpt2",
        f"output_root={out}",
    ]
    proc = run_cli(args, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_conv1d_method_trains_decodes_scores_and_records(e2e_runs):
    recs = {}
    for path in e2e_runs.rglob("record.json"):
        rec = json.loads(path.read_text())
        recs[rec["adapter"]] = (path.parent, rec)
    assert set(recs) == {"lora", "adalora", "quantum", "quantum_taylor", "full", "bitfit"}
    for method, (run_dir, rec) in recs.items():
        assert rec["task_family"] == "e2e" and rec["main_metric"] == "bleu"
        assert set(rec["metrics"]) == set(nlg.METRICS) and "metrics_unavailable" not in rec, method
        assert rec["eval_samples"] == {"test": 4} and rec["train_samples"] == 128
        assert rec["hyperparameters"]["label_smoothing"] == 0.1
        assert rec["hyperparameters"]["decoding"]["num_beams"] == 2
        outputs = (run_dir / "e2e_test_outputs.txt").read_text().splitlines()
        refs = read_grouped(run_dir / "e2e_test_refs.txt")
        assert len(outputs) == 4 and len(refs) == 4
        # the record's metrics are those of the written files
        rescored = nlg.score(outputs, refs)
        for name in nlg.METRICS:
            assert rec["metrics"][name] == pytest.approx(rescored[name], abs=1e-9), (method, name)
    # LoRA r=4 on c_attn (32 -> 96) of 2 layers: 2 * 4 * (32 + 96)
    assert recs["lora"][1]["adapter_params"] == 2 * 4 * (32 + 96)
    assert recs["lora"][1]["adapter_cfg"]["dropout"] == 0.1 and recs["lora"][1]["adapter_cfg"]["alpha"] == 32
    # the loss is logged and finite for every method; full fine-tuning (the tiny random model's adapters,
    # 1k parameters, barely move it in 32 steps) brings it clearly below the uniform log(1024) = 6.93
    for method, (run_dir, _) in recs.items():
        with open(run_dir / "metrics.csv") as f:
            losses = [float(r["value"]) for r in csv.DictReader(f) if r["key"] == "loss"]
        assert len(losses) >= 6 and all(math.isfinite(x) for x in losses), (method, losses)
        if method == "full":
            assert losses[-1] < 0.9 * losses[0], losses


def test_e2e_table_in_published_units(e2e_runs, tmp_path):
    written, _, _ = tables.build_tables([e2e_runs], tmp_path, REPO / "results" / "reference")
    md = (tmp_path / "e2e_gpt2.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[-5:] == ["BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"]
    published = [c.strip() for c in lines[1].strip("|").split("|")]
    assert published[0] == "LoRA (published)" and published[-5:] == ["70.4", "8.85", "46.8", "71.8", "2.53"]
    rec = json.loads(next(p for p in e2e_runs.rglob("record.json") if "/full/" in str(p)).read_text())
    full = next(r for r in tables_e2e.rows([rec], []) if r["method"] == rec["adapter_tag"])
    assert (
        full["BLEU"] == f"{100 * rec['metrics']['bleu']:.1f}"
        and full["NIST"] == f"{rec['metrics']['nist']:.2f}"
    )
    assert full["CIDEr"] == f"{rec['metrics']['cider']:.2f}" and full["ROUGE-L"] in md
    assert len(lines) == 2 + len(METHODS)  # header, published row, one row per method


def test_table_marks_metrics_a_run_could_not_compute():
    rec = {
        "backbone": "gpt2_medium",
        "adapter": "lora",
        "adapter_tag": "lora_r4",
        "seed": 0,
        "adapter_params": 393216,
        "metrics": {"bleu": 0.7, "nist": 8.8},
    }
    row = tables_e2e.rows([rec, {**rec, "seed": 1, "metrics": {"bleu": 0.6, "nist": 8.6}}], [])[0]
    assert row["BLEU"] == "65.0 ± 7.1" and row["NIST"] == "8.70 ± 0.14" and row["params"] == "0.39M"
    assert row["METEOR"] == row["ROUGE-L"] == row["CIDEr"] == "n/a" and row["seeds"] == "2"


def test_preset_is_the_lora_recipe():
    """experiment=e2e_gpt2 composes to LoRA's GPT-2 Medium / E2E recipe (shared/docs/protocols.md)."""
    cfg = compose_cfg(["experiment=e2e_gpt2", "adapter=lora_e2e"])
    assert cfg.backbone.name == "gpt2_medium" and list(cfg.backbone.targets) == ["c_attn"]
    spec = run_spec(cfg)
    hp = spec.hyperparameters
    assert (hp["lr"], hp["batch_size"], hp["epochs"], hp["warmup_steps"]) == (2e-4, 8, 5, 500)
    assert (hp["weight_decay"], hp["scheduler"], hp["label_smoothing"], hp["max_grad_norm"]) == (
        0.01,
        "linear",
        0.1,
        0.0,
    )
    assert hp["decoding"] == {
        "num_beams": 10,
        "length_penalty": 0.8,
        "no_repeat_ngram_size": 4,
        "max_new_tokens": 64,
    }
    acfg = OmegaConf.create(spec.adapter)
    assert (acfg.method, acfg.r, acfg.alpha, acfg.dropout) == ("lora", 4, 32, 0.1)
    assert list(acfg.targets) == ["c_attn"]
