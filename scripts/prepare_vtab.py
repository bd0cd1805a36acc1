"""Write the VTAB-1k folder layout for the 19 tasks (and cifar10) from TensorFlow Datasets.

    pip install -e '.[vtab]'      # tensorflow-datasets + tensorflow-cpu, only needed for this script
    python scripts/prepare_vtab.py --out data/vtab-1k [--tasks cifar100,dtd] [--tfds-dir ~/tensorflow_datasets]

Output, per task: `<out>/<task>/images/<split>/NNNNNN.jpg` for split in train800, val200, test, and the
list files `train800.txt`, `val200.txt`, `train800val200.txt` (train800 lines then val200 lines) and
`test.txt`, each line `<path relative to <out>/<task>> <label>`. This is what qpeft.data.vtab reads.

Splits follow the VTAB code (google-research/task_adaptation, `task_adaptation/data/*.py`): train800 is
always `train[:800]`; val200 is the first 200 of VTAB's own validation split; test is VTAB's test split,
which is the official TFDS test split only where the dataset has one. N is the size of the TFDS `train`
split, p% of it is `p * N // 100` (integer division, as in the VTAB code).

| task | TFDS name:version | val200 | test | label |
|---|---|---|---|---|
| cifar100 | cifar100:3.*.* | train[90%N : +200] | test | label |
| caltech101 | caltech101:3.*.* | train[90%N : +200] | test | label |
| dtd | dtd:3.*.* | validation[:200] | test | label |
| oxford_flowers102 | oxford_flowers102:2.*.* | validation[:200] | test | label |
| oxford_iiit_pet | oxford_iiit_pet:3.*.* | train[80%N : +200] | test | label |
| svhn | svhn_cropped:3.*.* | train[90%N : +200] | test | label |
| sun397 | sun397/tfds:4.*.* | validation[:200] | test | label |
| patch_camelyon | patch_camelyon:2.*.* | validation[:200] | test | label |
| eurosat | eurosat/rgb:2.*.* | train[60%N : +200] | train[80%N:] | label |
| resisc45 | resisc45:3.*.* | train[60%N : +200] | train[80%N:] | label |
| diabetic_retinopathy | diabetic_retinopathy_detection/btgraham-300:3.*.* | validation[:200] | test | label |
| clevr_count | clevr:3.*.* | train[90%N : +200] | validation | number of objects - 3 (3..10 -> 0..7) |
| clevr_dist | clevr:3.*.* | train[90%N : +200] | validation | min object depth (pixel_coords z), bins at 8, 8.5, 9, 9.5, 10 |
| dmlab | dmlab:2.0.1 | validation[:200] | test | label |
| kitti | kitti:3.*.* | validation[:200] | test | closest Car/Van/Truck depth: < 8 m, < 20 m, more, no vehicle |
| dsprites_loc | dsprites:2.*.* | train[80%N : +200] | train[90%N:] | label_x_position // 2 (32 -> 16) |
| dsprites_ori | dsprites:2.*.* | train[80%N : +200] | train[90%N:] | floor(label_orientation / 2.5) (40 -> 16) |
| smallnorb_azi | smallnorb:2.*.* | test[:200] | test[50%:] | label_azimuth (18) |
| smallnorb_ele | smallnorb:2.*.* | test[:200] | test[50%:] | label_elevation (9) |
| cifar10 | cifar10:3.*.* | train[90%N : +200] | test | label |

Grey images (dsprites, smallnorb) are tiled to RGB; dsprites pixels are 0/1 and are scaled by 255.
Binned labels use VTAB's rule: label = the largest i with threshold[i] < value.
diabetic_retinopathy and resisc45 need a manual download into `--manual-dir` (see the TFDS catalog).
The slicing and label logic below is pure Python on example dicts; only `tfds_reader` touches TFDS.
"""

import argparse
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from PIL import Image

# (TFDS split, start, stop); stop None = to the end of the split
Slice = tuple[str, int, int | None]
SplitFn = Callable[[Mapping[str, int]], dict[str, list[Slice]]]


def official(val: str = "validation", test: str = "test") -> SplitFn:
    """train[:800], <val>[:200], the whole <test> split."""
    return lambda n: {"train800": [("train", 0, 800)], "val200": [(val, 0, 200)], "test": [(test, 0, None)]}


def held_out(train_pct: int, test: str = "test") -> SplitFn:
    """train[:800], train[c:c+200] with c = train_pct% of train (VTAB's held-out val), the whole <test>."""

    def fn(n: Mapping[str, int]) -> dict[str, list[Slice]]:
        c = train_pct * n["train"] // 100
        return {"train800": [("train", 0, 800)], "val200": [("train", c, c + 200)], "test": [(test, 0, None)]}

    return fn


def three_way(train_pct: int, val_pct: int) -> SplitFn:
    """Only a train split: train/val/test are its first train_pct%, next val_pct% and the rest."""

    def fn(n: Mapping[str, int]) -> dict[str, list[Slice]]:
        c, v = train_pct * n["train"] // 100, val_pct * n["train"] // 100
        return {
            "train800": [("train", 0, 800)],
            "val200": [("train", c, c + 200)],
            "test": [("train", c + v, None)],
        }

    return fn


def smallnorb_split(n: Mapping[str, int]) -> dict[str, list[Slice]]:
    """smallNORB: val and test are the two halves of the official test split."""
    half = 50 * n["test"] // 100
    return {"train800": [("train", 0, 800)], "val200": [("test", 0, 200)], "test": [("test", half, None)]}


def bin_label(value: float, thresholds: list[float]) -> int:
    """VTAB's binning: the largest i with thresholds[i] < value."""
    i = int(np.sum(np.asarray(thresholds) < value)) - 1
    if i < 0:
        raise ValueError(f"value {value} is not above the first threshold {thresholds[0]}")
    return i


def label(ex: Mapping) -> int:
    return int(ex["label"])


def clevr_count(ex: Mapping) -> int:
    return len(ex["objects"]["size"]) - 3


def clevr_dist(ex: Mapping) -> int:
    depth = float(np.min(np.asarray(ex["objects"]["pixel_coords"])[:, 2]))
    return bin_label(depth, [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])


def kitti_closest_vehicle(ex: Mapping) -> int:
    obj = ex["objects"]
    vehicles = np.asarray(obj["type"]) < 3  # Car, Van, Truck
    depth = np.asarray(obj["location"], dtype=np.float64).reshape(-1, 3)[vehicles, 2]
    return bin_label(float(np.min(np.append(depth, 1000.0))), [-100.0, 8.0, 20.0, 999.0])


def attribute(key: str, num_original: int = 0, num_classes: int = 0) -> Callable[[Mapping], int]:
    """Label from a named attribute, optionally grouped into num_classes bins (VTAB's dsprites rule)."""
    factor = num_original / num_classes if num_classes else 1.0
    return lambda ex: int(math.floor(float(ex[key]) / factor))


@dataclass(frozen=True)
class Spec:
    tfds: str  # TFDS name:version as pinned in the VTAB code
    splits: SplitFn
    label: Callable[[Mapping], int]
    num_classes: int
    pixel_scale: int = 1  # dsprites stores 0/1 pixels


SPECS: dict[str, Spec] = {
    "cifar100": Spec("cifar100:3.*.*", held_out(90), label, 100),
    "caltech101": Spec("caltech101:3.*.*", held_out(90), label, 102),
    "dtd": Spec("dtd:3.*.*", official(), label, 47),
    "oxford_flowers102": Spec("oxford_flowers102:2.*.*", official(), label, 102),
    "oxford_iiit_pet": Spec("oxford_iiit_pet:3.*.*", held_out(80), label, 37),
    "svhn": Spec("svhn_cropped:3.*.*", held_out(90), label, 10),
    "sun397": Spec("sun397/tfds:4.*.*", official(), label, 397),
    "patch_camelyon": Spec("patch_camelyon:2.*.*", official(), label, 2),
    "eurosat": Spec("eurosat/rgb:2.*.*", three_way(60, 20), label, 10),
    "resisc45": Spec("resisc45:3.*.*", three_way(60, 20), label, 45),
    "diabetic_retinopathy": Spec("diabetic_retinopathy_detection/btgraham-300:3.*.*", official(), label, 5),
    "clevr_count": Spec("clevr:3.*.*", held_out(90, test="validation"), clevr_count, 8),
    "clevr_dist": Spec("clevr:3.*.*", held_out(90, test="validation"), clevr_dist, 6),
    "dmlab": Spec("dmlab:2.0.1", official(), label, 6),
    # VTAB pins kitti:3.1.0, which current TFDS cannot build; the maintainers say 3.2.0 holds the same data
    "kitti": Spec("kitti:3.*.*", official(), kitti_closest_vehicle, 4),
    "dsprites_loc": Spec("dsprites:2.*.*", three_way(80, 10), attribute("label_x_position", 32, 16), 16, 255),
    "dsprites_ori": Spec(
        "dsprites:2.*.*", three_way(80, 10), attribute("label_orientation", 40, 16), 16, 255
    ),
    "smallnorb_azi": Spec("smallnorb:2.*.*", smallnorb_split, attribute("label_azimuth"), 18),
    "smallnorb_ele": Spec("smallnorb:2.*.*", smallnorb_split, attribute("label_elevation"), 9),
    "cifar10": Spec("cifar10:3.*.*", held_out(90), label, 10),
}

Reader = Callable[[str, int, int | None], Iterable[Mapping]]


def to_pil(image: np.ndarray, scale: int = 1) -> Image.Image:
    """HxW, HxWx1 or HxWx3 array -> RGB PIL image."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if scale != 1:
        a = a.astype(np.int32) * scale
    a = np.clip(a, 0, 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def write_task(
    task: str, out: Path, sizes: Mapping[str, int], read: Reader, quality: int = 95
) -> dict[str, int]:
    """Write one task's images and list files from `read(split, start, stop)`; returns lines per list."""
    spec = SPECS[task]
    task_dir = Path(out) / task
    lines: dict[str, list[str]] = {}
    for split, slices in spec.splits(sizes).items():
        (task_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for i, ex in enumerate(chain.from_iterable(read(*s) for s in slices)):
            y = spec.label(ex)
            if not 0 <= y < spec.num_classes:
                raise ValueError(f"{task} {split} example {i}: label {y} outside [0, {spec.num_classes})")
            rel = f"images/{split}/{i:06d}.jpg"
            to_pil(ex["image"], spec.pixel_scale).save(task_dir / rel, quality=quality)
            lines[split].append(f"{rel} {y}")
        want = {"train800": 800, "val200": 200}.get(split)
        if want is not None and len(lines[split]) != want:
            raise ValueError(f"{task} {split}: got {len(lines[split])} examples, expected {want}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, ls in lines.items():  # list files last: a task folder with test.txt is complete
        (task_dir / f"{split}.txt").write_text("".join(f"{line}\n" for line in ls))
    return {split: len(ls) for split, ls in lines.items()}


def tfds_reader(spec: Spec, data_dir: str | None, manual_dir: str | None) -> tuple[dict[str, int], Reader]:
    """Prepare the TFDS dataset; return its split sizes and a reader of numpy example dicts."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        sys.exit("prepare_vtab.py needs TensorFlow Datasets: pip install -e '.[vtab]'")
    builder = tfds.builder(spec.tfds, data_dir=data_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}

    def read(split: str, start: int, stop: int | None) -> Iterable[Mapping]:
        ds = builder.as_dataset(split=f"{split}[{start}:{'' if stop is None else stop}]", shuffle_files=False)
        return tfds.as_numpy(ds)

    return sizes, read


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="VTAB-1k folder to write (QPEFT_VTAB_DIR)")
    p.add_argument("--tasks", default="all", help="comma-separated task names, or 'all' (the 19 + cifar10)")
    p.add_argument("--tfds-dir", default=None, help="TFDS data_dir (default ~/tensorflow_datasets)")
    p.add_argument("--manual-dir", default=None, help="manual downloads (diabetic_retinopathy, resisc45)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--overwrite", action="store_true", help="rewrite tasks whose test.txt exists")
    args = p.parse_args()
    tasks = list(SPECS) if args.tasks == "all" else args.tasks.split(",")
    unknown = [t for t in tasks if t not in SPECS]
    if unknown:
        sys.exit(f"unknown task(s) {unknown}; valid: {', '.join(SPECS)}")
    for task in tasks:
        if (args.out / task / "test.txt").exists() and not args.overwrite:
            print(f"{task}: exists, skipped (--overwrite to rewrite)")
            continue
        sizes, read = tfds_reader(SPECS[task], args.tfds_dir, args.manual_dir)
        print(f"{task}: {write_task(task, args.out, sizes, read, args.quality)}", flush=True)


if __name__ == "__main__":
    main()
