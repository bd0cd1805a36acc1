"""VTAB-1k image classification data: the on-disk folder layout, transforms, collator and group means.

Layout (as most PEFT vision code reads it, written by scripts/prepare_vtab.py):
`<root>/<task>/<split>.txt` with lines `<relative path> <label>`, paths relative to `<root>/<task>/`,
splits train800, val200, train800val200 and test. See docs/vtab.md.
"""

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import transforms

from qpeft.data import check_train_limit
from qpeft.errors import QpeftError

ENV_VAR = "QPEFT_VTAB_DIR"
CIFAR10_ENV_VAR = "QPEFT_CIFAR10_DIR"
SPLITS = ("train800", "val200", "train800val200", "test")
GROUPS = ("natural", "specialized", "structured")


class TaskInfo(NamedTuple):
    num_classes: int
    group: str | None


# The 19 VTAB-1k tasks in the order of the published tables (shared/docs/protocols.md), plus cifar10.
TASKS: dict[str, TaskInfo] = {
    "cifar100": TaskInfo(100, "natural"),
    "caltech101": TaskInfo(102, "natural"),
    "dtd": TaskInfo(47, "natural"),
    "oxford_flowers102": TaskInfo(102, "natural"),
    "oxford_iiit_pet": TaskInfo(37, "natural"),
    "svhn": TaskInfo(10, "natural"),
    "sun397": TaskInfo(397, "natural"),
    "patch_camelyon": TaskInfo(2, "specialized"),
    "eurosat": TaskInfo(10, "specialized"),
    "resisc45": TaskInfo(45, "specialized"),
    "diabetic_retinopathy": TaskInfo(5, "specialized"),
    "clevr_count": TaskInfo(8, "structured"),
    "clevr_dist": TaskInfo(6, "structured"),
    "dmlab": TaskInfo(6, "structured"),
    "kitti": TaskInfo(4, "structured"),
    "dsprites_loc": TaskInfo(16, "structured"),
    "dsprites_ori": TaskInfo(16, "structured"),
    "smallnorb_azi": TaskInfo(18, "structured"),
    "smallnorb_ele": TaskInfo(9, "structured"),
    "cifar10": TaskInfo(10, None),  # offline stand-in in the same layout, not one of the 19
}
VTAB19 = [t for t, info in TASKS.items() if info.group is not None]


def _task_info(task: str) -> TaskInfo:
    if task not in TASKS:
        raise ValueError(f"Unknown VTAB task {task!r}; valid names: {', '.join(TASKS)}.")
    return TASKS[task]


def resolve_root(setting: str | os.PathLike | None) -> Path:
    """The VTAB-1k data folder: the setting if given, else $QPEFT_VTAB_DIR."""
    value = setting if setting not in (None, "") else os.environ.get(ENV_VAR)
    if not value:
        raise FileNotFoundError(
            f"No VTAB-1k data folder is set: pass task.data_dir=<folder> or set {ENV_VAR} "
            "(e.g. to ../shared/data/vtab-1k)."
        )
    return Path(value).expanduser()


def read_split(root: Path, task: str, split: str) -> list[tuple[Path, int]]:
    """Parse `<root>/<task>/<split>.txt` into (image path, label) pairs, checking every image exists."""
    num_classes = _task_info(task).num_classes
    if split not in SPLITS:
        raise ValueError(f"Unknown VTAB-1k split {split!r}; valid splits: {', '.join(SPLITS)}.")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"VTAB-1k data folder {root} does not exist: set task.data_dir=<folder> or {ENV_VAR} "
            "to the folder that holds <task>/<split>.txt (e.g. ../shared/data/vtab-1k)."
        )
    task_dir = root / task
    list_file = task_dir / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(
            f"{list_file} is missing: task.data_dir / {ENV_VAR} must point at a VTAB-1k folder with "
            f"{task}/{split}.txt (scripts/prepare_vtab.py writes one)."
        )
    samples = []
    for n, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{list_file}, line {n}: expected '<relative path> <label>', got {line!r}.")
        label = int(parts[1])
        if not 0 <= label < num_classes:
            raise ValueError(
                f"{list_file}, line {n}: label {label} is outside [0, {num_classes}) for task {task}."
            )
        samples.append((task_dir / parts[0], label))
    if not samples:
        raise ValueError(
            f"{list_file} lists no images: re-create the data folder that task.data_dir / {ENV_VAR} points at "
            "(scripts/prepare_vtab.py)."
        )
    # one directory listing per folder instead of one stat per image
    listings: dict[Path, set[str]] = {}
    missing = []
    for path, _ in samples:
        if path.parent not in listings:
            listings[path.parent] = set(os.listdir(path.parent)) if path.parent.is_dir() else set()
        if path.name not in listings[path.parent]:
            missing.append(path)
    if missing:
        raise FileNotFoundError(
            f"{list_file} lists {len(missing)} image(s) that do not exist, first {missing[0]}: re-create "
            f"the data folder that task.data_dir / {ENV_VAR} points at (scripts/prepare_vtab.py)."
        )
    return samples


def build_transform(
    image_size: int = 224,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    interpolation: str = "bicubic",
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize to image_size x image_size, to tensor, normalise; no augmentation (the VTAB-1k protocol)."""
    mode = transforms.InterpolationMode(interpolation)
    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size), interpolation=mode),
            transforms.ToTensor(),
            transforms.Normalize(list(mean), list(std)),
        ]
    )


class VtabDataset(Dataset):
    """(image path, label) pairs -> {"pixel_values": Tensor[3, H, W], "labels": int}."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified, truncated or corrupt image data
            raise QpeftError(
                f"image {path} cannot be read ({type(e).__name__}: {e}): replace it, or re-create the data "
                f"folder that task.data_dir / {ENV_VAR} points at (scripts/prepare_vtab.py)"
            ) from None
        return {"pixel_values": self.transform(image), "labels": label}


class _TupleToDict(Dataset):
    """Wrap a torchvision dataset of (image, label) tuples into the dict samples used here."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pixel_values, label = self.base[i]
        return {"pixel_values": pixel_values, "labels": int(label)}


def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack samples into {"pixel_values": [B, 3, H, W], "labels": [B] long}."""
    return {
        "pixel_values": torch.stack([b["pixel_values"] for b in batch]),
        "labels": torch.tensor([int(b["labels"]) for b in batch], dtype=torch.long),
    }


def load_cifar10_full(
    root: str | os.PathLike | None, transform: Callable, download: bool = False, mode: str = "final"
) -> tuple[Dataset, dict[str, Dataset]]:
    """Full CIFAR-10 via torchvision: final = train 50k -> test 10k, tune = train[:45k] -> train[45k:]."""
    value = root if root not in (None, "") else os.environ.get(CIFAR10_ENV_VAR)
    if not value:
        raise FileNotFoundError(
            f"No CIFAR-10 folder is set: pass task.data_dir=<folder> or set {CIFAR10_ENV_VAR} "
            "(add task.download=true on a machine with network access)."
        )
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(value), train=True, transform=transform, download=download)
        test = CIFAR10(str(value), train=False, transform=transform, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
        raise FileNotFoundError(
            f"CIFAR-10 (torchvision layout, cifar-10-batches-py/) is not in {value}: fix task.data_dir / "
            f"{CIFAR10_ENV_VAR}, or set task.download=true on a machine with network access."
        ) from e
    if mode == "final":
        return _TupleToDict(train), {"test": _TupleToDict(test)}
    if mode == "tune":  # VTAB's convention for CIFAR: the last 10% of the training set is the validation set
        n = len(train) * 90 // 100
        val = Subset(train, range(n, len(train)))
        return _TupleToDict(Subset(train, range(n))), {"val": _TupleToDict(val)}
    raise ValueError(f"task.mode must be 'tune' or 'final', got {mode!r}.")


def load(
    task_cfg: Mapping, root: str | os.PathLike | None, mode: str | None, transform: Callable
) -> tuple[Dataset, dict[str, Dataset]]:
    """Train and eval datasets: tune = train800 -> {"val200"}, final = train800val200 -> {"test"}."""
    mode = mode or task_cfg.get("mode", "final")
    if task_cfg.get("source", "folder") == "torchvision":
        return load_cifar10_full(root, transform, download=bool(task_cfg.get("download", False)), mode=mode)
    if mode not in ("tune", "final"):
        raise ValueError(f"task.mode must be 'tune' or 'final', got {mode!r}.")
    task = task_cfg["name"]
    root = resolve_root(root)
    train_split, eval_split = ("train800", "val200") if mode == "tune" else ("train800val200", "test")
    train = VtabDataset(read_split(root, task, train_split), transform)
    evals = VtabDataset(read_split(root, task, eval_split), transform)
    return train, {eval_split: evals}


def load_task(
    task_cfg: Mapping,
    transform: Callable,
    seed: int = 0,
    train_limit: int | None = None,
    eval_limit: int | None = None,
) -> tuple[Dataset, dict[str, Dataset]]:
    """`load` with task.data_dir and task.mode; train_limit keeps a seeded random subset, eval_limit the first N."""
    train, evals = load(task_cfg, task_cfg.get("data_dir"), task_cfg.get("mode"), transform)
    check_train_limit(train_limit, len(train), task_cfg["name"])
    if train_limit and train_limit < len(train):
        g = torch.Generator().manual_seed(seed)
        train = Subset(train, torch.randperm(len(train), generator=g)[:train_limit].tolist())
    if eval_limit:
        evals = {k: Subset(v, range(min(eval_limit, len(v)))) for k, v in evals.items()}
    return train, evals


def group_means(per_task: Mapping[str, float]) -> dict[str, float | None]:
    """Per-group means, the 19-task mean and the mean of the three group means; None where incomplete."""
    out: dict[str, float | None] = {}
    for group in GROUPS:
        tasks = [t for t in VTAB19 if TASKS[t].group == group]
        complete = all(t in per_task for t in tasks)
        out[f"vtab_{group}"] = sum(per_task[t] for t in tasks) / len(tasks) if complete else None
    complete = all(t in per_task for t in VTAB19)
    out["vtab_mean19"] = sum(per_task[t] for t in VTAB19) / len(VTAB19) if complete else None
    gm = [out[f"vtab_{g}"] for g in GROUPS]
    out["vtab_mean_groups"] = sum(gm) / len(gm) if all(m is not None for m in gm) else None
    return out
