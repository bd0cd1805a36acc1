"""qpeft.bench end to end on a tiny backbone: one CSV row per method with the ratio columns (no timings)."""

from __future__ import annotations

import csv

from qpeft import bench


def test_bench_runs_end_to_end(tmp_path, capsys):
    argv = ["--backbone", "tiny_bert", "--batch", "2", "--seq", "16", "--steps", "2", "--warmup", "1"]
    argv += [
        "--infer-steps",
        "1",
        "--threads",
        "1",
        "--methods",
        ",".join(bench.METHODS),
        "--out",
        str(tmp_path),
    ]
    bench.main(argv)
    stem = bench.device_name(bench.torch.device("cpu"))
    with open(tmp_path / f"{stem}.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == [*bench.METHODS, bench.BARE]
    for col in ("train_step_ms", "train_ratio_lora", "peak_mem_mb", "mem_ratio_lora", "infer_ratio_lora"):
        assert col in rows[0]
    by = {r["method"]: r for r in rows}
    assert float(by[bench.LORA]["train_ratio_lora"]) == 1.0
    assert float(by[bench.BARE]["merged_ratio_bare"]) == 1.0
    for r in rows[:-1]:
        assert float(r["train_step_ms"]) > 0 and float(r["train_ratio_lora"]) > 0
        assert float(r["peak_mem_mb"]) >= 0 and float(r["merged_ratio_bare"]) > 0
        assert int(r["steps"]) == 2
    assert int(by[bench.QUANTUM]["adapter_params"]) > 0 and int(by["head_only"]["adapter_params"]) == 0
    md = (tmp_path / f"{stem}.md").read_text()
    assert "| method |" in md and "threads: 1" in md and bench.QUANTUM in md
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"{bench.QUANTUM}/{bench.LORA} train step ratio: ")


def test_default_methods_are_all_but_the_ones_on_request():
    """The default list: every method but those benched on request, in float32 and bf16 alike."""
    fp32, bf16 = bench.parse([]).methods, bench.parse(["--dtype", "bf16"]).methods
    assert fp32 == bf16 == [m for m in bench.METHODS if m not in bench.ON_REQUEST]
    assert bench.parse(["--methods", "quantum_kfull_l1_unfolded"]).methods == ["quantum_kfull_l1_unfolded"]
    # the float32 low-rank path at full rank: only when named (the GPU check names it)
    assert bench.ON_REQUEST and not set(bench.ON_REQUEST) & set(fp32 + bf16)
    assert bench.parse(["--methods", "quantum_kfull_l1_unfolded"]).methods == ["quantum_kfull_l1_unfolded"]


def test_the_narrow_deberta_stands_in_for_the_base_models_host_time(tmp_path):
    """deberta_v3_narrow is DeBERTaV3-base's layout at width 64 (docs/gpu.md section 5): the same depth,
    attention type and adapted matrices, so a step dispatches the same ops per layer, and the bench runs on it."""
    base, narrow = bench.backbone_config("deberta_v3_base"), bench.backbone_config("deberta_v3_narrow")
    assert list(narrow.targets) == list(base.targets) and list(narrow.head) == list(base.head)
    same = ["model_type", "num_hidden_layers", "relative_attention", "share_att_key", "pos_att_type"]
    same += ["norm_rel_ebd", "position_biased_input", "type_vocab_size"]
    for key in same:
        assert narrow.arch[key] == base.arch[key], key
    assert narrow.arch.hidden_size == 64
    argv = ["--backbone", "deberta_v3_narrow", "--batch", "2", "--seq", "16", "--steps", "1", "--warmup", "1"]
    argv += ["--infer-steps", "1", "--methods", "lora_r8,quantum_k8_l1", "--dtype", "bf16"]
    rows = bench.main([*argv, "--out", str(tmp_path)])
    assert int(rows[0]["adapter_params"]) == 72 * 8 * (64 + 64) + 24 * 8 * (256 - 64)  # LoRA r=8 on 72
