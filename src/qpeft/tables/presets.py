"""What each benchmark's table looks like: task order, labels, how a cell is made, method order."""

from __future__ import annotations

ADHOC = "adhoc"  # the preset of records without an experiment name
DASH = "—"

GLUE_TASKS = ["mnli", "sst2", "cola", "qqp", "qnli", "rte", "mrpc", "stsb"]  # AdaLoRA Table 1 order
VTAB_GROUPS = {
    "natural": ["cifar100", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": [
        "clevr_count",
        "clevr_dist",
        "dmlab",
        "kitti",
        "dsprites_loc",
        "dsprites_ori",
        "smallnorb_azi",
        "smallnorb_ele",
    ],
}
VTAB_TASKS = [t for tasks in VTAB_GROUPS.values() for t in tasks]
TASK_LABELS = {
    "mnli": "MNLI",
    "sst2": "SST-2",
    "cola": "CoLA",
    "qqp": "QQP",
    "qnli": "QNLI",
    "rte": "RTE",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "cifar100": "CIFAR-100",
    "caltech101": "Caltech101",
    "dtd": "DTD",
    "oxford_flowers102": "Flowers102",
    "oxford_iiit_pet": "Pets",
    "svhn": "SVHN",
    "sun397": "Sun397",
    "patch_camelyon": "Camelyon",
    "eurosat": "EuroSAT",
    "resisc45": "Resisc45",
    "diabetic_retinopathy": "Retinopathy",
    "clevr_count": "Clevr-Count",
    "clevr_dist": "Clevr-Dist",
    "dmlab": "DMLab",
    "kitti": "KITTI-Dist",
    "dsprites_loc": "dSpr-Loc",
    "dsprites_ori": "dSpr-Ori",
    "smallnorb_azi": "sNORB-Azim",
    "smallnorb_ele": "sNORB-Elev",
}
# Adapter methods in table order (records' `adapter`); unknown methods come last, by name.
METHOD_ORDER = ["full", "head_only", "bitfit", "lora", "adalora", "oft", "boft", "quantum", "quantum_taylor"]

# How a task's cell is made: (part, metric key) pairs, the column key being `task` or `task_part`. The
# default is AdaLoRA Table 1 (MNLI m/mm, QQP acc/F1, STS-B mean of Pearson and Spearman); a task not
# listed shows its record's main_metric. A task's score (for averages) is the mean of its parts.
DEFAULT_PARTS = {
    "mnli": [("m", "accuracy_matched"), ("mm", "accuracy_mismatched")],
    "qqp": [("acc", "accuracy"), ("f1", "f1")],
    "stsb": [("", "pearson_spearman")],
}
# Presets whose published table gives one number per task (the LoRA paper: MNLI-m, QQP acc, STS-B Pearson).
PRESET_PARTS = {
    "glue_roberta": {
        "mnli": [("", "accuracy_matched")],
        "qqp": [("", "accuracy")],
        "stsb": [("", "pearson")],
    },
}
# Presets that sweep a subset of a benchmark: their columns (and their average) are those tasks only.
PRESET_TASKS = {
    "minilm_glue": ["sst2", "cola", "mrpc", "stsb", "rte"],
    "frontier_minilm": ["sst2", "stsb"],
    "claim_minilm": ["sst2", "stsb"],
    "claim_gpu_sst2": ["sst2"],
}
PART_LABELS = {"m": "m", "mm": "mm", "acc": "acc", "f1": "F1"}
SUMMARY_LABELS = {
    "avg": "Avg",
    "natural": "Natural",
    "specialized": "Specialized",
    "structured": "Structured",
    "mean19": "Mean (19)",
    "mean_groups": "Mean (groups)",
}
REFERENCE_META = ("preset", "method", "backbone", "params", "source")


def parts_for(preset: str, task: str, main_metric: str | None) -> list[tuple[str, str]]:
    """The (csv key, metric key) pairs of one task's column in `preset` (metric "" = the main metric)."""
    spec = PRESET_PARTS.get(preset, {}).get(task) or DEFAULT_PARTS.get(task)
    if spec is None:
        return [(task, main_metric or "")]
    return [(f"{task}_{p}" if p else task, metric) for p, metric in spec]


def header(task: str, parts: list[tuple[str, str]]) -> str:
    """A column's header: the task's label, with its part names when it has two numbers (MNLI m/mm)."""
    label = TASK_LABELS.get(task, task)
    names = [key[len(task) + 1 :] for key, _ in parts if key != task]
    return f"{label} {'/'.join(PART_LABELS.get(n, n) for n in names)}" if len(names) > 1 else label


def task_order(tasks: set[str]) -> list[str]:
    """Benchmark order for known tasks, then the rest by name."""
    known = [t for t in GLUE_TASKS + VTAB_TASKS if t in tasks]
    return known + sorted(tasks - set(known))


def method_rank(method: str | None) -> int:
    """The position of an adapter method in METHOD_ORDER (unknown methods last)."""
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
