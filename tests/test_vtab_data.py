"""VTAB-1k data: list files, datasets, errors, group means, prepare_vtab slicing, task configs."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from qpeft.data import vtab

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get(vtab.ENV_VAR) or ROOT / ".." / "shared" / "data" / "vtab-1k")
needs_data = pytest.mark.skipif(not (DATA / "cifar10").is_dir(), reason=f"no VTAB-1k cifar10 under {DATA}")


def _prepare_vtab():
    spec = importlib.util.spec_from_file_location("prepare_vtab", ROOT / "scripts" / "prepare_vtab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_data
def test_split_sizes():
    sizes = {s: len(vtab.read_split(DATA, "cifar10", s)) for s in vtab.SPLITS}
    assert sizes == {"train800": 800, "val200": 200, "train800val200": 1000, "test": 1000}


@needs_data
def test_load_modes_and_sample():
    cfg = OmegaConf.create({"name": "cifar10", "mode": "final"})
    train, evals = vtab.load(cfg, DATA, None, vtab.build_transform())
    assert len(train) == 1000 and list(evals) == ["test"] and len(evals["test"]) == 1000
    x = train[0]
    assert x["pixel_values"].shape == (3, 224, 224) and x["pixel_values"].dtype == torch.float32
    assert 0 <= x["labels"] < 10
    train, evals = vtab.load(cfg, DATA, "tune", vtab.build_transform(image_size=32))
    assert len(train) == 800 and len(evals["val200"]) == 200
    batch = vtab.collate([train[0], train[1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["labels"].dtype == torch.long
    cfg = OmegaConf.create({"name": "cifar10", "mode": "final", "data_dir": str(DATA)})
    a, evals = vtab.load_task(cfg, vtab.build_transform(image_size=32), seed=1, train_limit=50, eval_limit=30)
    b, _ = vtab.load_task(cfg, vtab.build_transform(image_size=32), seed=1, train_limit=50)
    assert len(a) == 50 and len(evals["test"]) == 30 and a.indices == b.indices != list(range(50))


def _fake_task(tmp_path, lines, images=("a.jpg",)):
    task_dir = tmp_path / "cifar10"
    task_dir.mkdir(parents=True)
    for name in images:
        (task_dir / name).write_bytes(b"")
    (task_dir / "val200.txt").write_text("".join(f"{line}\n" for line in lines))
    return task_dir / "val200.txt"


def test_malformed_line_names_file_and_line(tmp_path):
    list_file = _fake_task(tmp_path, ["a.jpg 1", "a.jpg"])
    with pytest.raises(ValueError, match=r"val200\.txt, line 2") as e:
        vtab.read_split(tmp_path, "cifar10", "val200")
    assert str(list_file) in str(e.value)


def test_label_out_of_range_and_missing_image(tmp_path):
    _fake_task(tmp_path, ["a.jpg 1", "a.jpg 10"])
    with pytest.raises(ValueError, match=r"line 2: label 10 is outside \[0, 10\)"):
        vtab.read_split(tmp_path, "cifar10", "val200")
    (tmp_path / "cifar10" / "val200.txt").write_text("a.jpg 1\nb.jpg 2\n")
    with pytest.raises(FileNotFoundError, match="1 image.*b.jpg"):
        vtab.read_split(tmp_path, "cifar10", "val200")


def test_missing_folder_and_unset_root(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="QPEFT_VTAB_DIR"):
        vtab.read_split(tmp_path / "nope", "cifar10", "train800")
    with pytest.raises(FileNotFoundError, match="train800.txt"):
        vtab.read_split(tmp_path, "cifar10", "train800")
    monkeypatch.delenv(vtab.ENV_VAR, raising=False)
    with pytest.raises(FileNotFoundError, match="task.data_dir=.*QPEFT_VTAB_DIR"):
        vtab.resolve_root(None)
    monkeypatch.setenv(vtab.ENV_VAR, str(tmp_path))
    assert vtab.resolve_root(None) == tmp_path and vtab.resolve_root("x") == Path("x")


def test_cifar10_full_missing_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="task.download=true"):
        vtab.load_cifar10_full(tmp_path, vtab.build_transform())


def test_group_means():
    # natural = 1..7 (mean 4), specialized = 10, 20, 30, 40 (mean 25), structured = 8 x 0.5 (mean 0.5)
    nat, spec, struct = [0, 1, 2, 3, 4, 5, 6, 7], [10, 20, 30, 40], [0.5] * 8
    values = nat[1:] + spec + struct
    per_task = dict(zip(vtab.VTAB19, values))
    out = vtab.group_means(per_task)
    assert out["vtab_natural"] == pytest.approx(4.0)
    assert out["vtab_specialized"] == pytest.approx(25.0)
    assert out["vtab_structured"] == pytest.approx(0.5)
    assert out["vtab_mean19"] == pytest.approx((28 + 100 + 4) / 19)
    assert out["vtab_mean_groups"] == pytest.approx((4 + 25 + 0.5) / 3)
    del per_task["kitti"]
    out = vtab.group_means({**per_task, "cifar10": 99.0})
    assert out["vtab_structured"] is None and out["vtab_mean19"] is None and out["vtab_mean_groups"] is None
    assert out["vtab_natural"] == pytest.approx(4.0)


def _fake_reader(data):
    return lambda split, start, stop: data[split][start:stop]


def test_prepare_vtab_smallnorb(tmp_path):
    pv = _prepare_vtab()
    img = np.full((8, 8, 1), 7, np.uint8)
    ex = [{"image": img, "label_azimuth": i % 18, "label_elevation": i % 9} for i in range(1000)]
    data = {"train": ex[:900], "test": ex[:600]}  # val = test[:200], test = test[300:]
    counts = pv.write_task("smallnorb_ele", tmp_path, {"train": 900, "test": 600}, _fake_reader(data))
    assert counts == {"train800": 800, "val200": 200, "test": 300, "train800val200": 1000}
    task = tmp_path / "smallnorb_ele"
    assert len(list((task / "images" / "test").iterdir())) == 300
    test = vtab_lines(task / "test.txt")
    assert test[0] == ("images/test/000000.jpg", 300 % 9) and test[-1][1] == 599 % 9
    samples = vtab.read_split(tmp_path, "smallnorb_ele", "train800val200")
    assert len(samples) == 1000 and samples[800][1] == 0


def test_prepare_vtab_dsprites_labels(tmp_path):
    pv = _prepare_vtab()
    n = 1000  # train800 = [:800], val200 = [800:1000] (80% of 1000), test = train[900:]
    ex = [
        {"image": np.ones((4, 4, 1), np.uint8), "label_x_position": i % 32, "label_orientation": i % 40}
        for i in range(n)
    ]
    counts = pv.write_task("dsprites_ori", tmp_path, {"train": n}, _fake_reader({"train": ex}))
    assert counts["test"] == 100 and counts["val200"] == 200
    lines = vtab_lines(tmp_path / "dsprites_ori" / "val200.txt")
    assert [y for _, y in lines[:6]] == [int((800 + i) % 40 // 2.5) for i in range(6)]
    with vtab.Image.open(tmp_path / "dsprites_ori" / lines[0][0]) as im:  # 0/1 pixels scaled to 255
        assert im.mode == "RGB" and min(im.getpixel((1, 1))) > 240
    assert pv.attribute("label_x_position", 32, 16)({"label_x_position": 31}) == 15


def test_prepare_vtab_binned_labels():
    pv = _prepare_vtab()
    objs = {"size": np.zeros(5), "pixel_coords": np.array([[0, 0, 9.2], [0, 0, 8.6], [0, 0, 12.0]])}
    assert pv.clevr_count({"objects": objs}) == 2
    assert pv.clevr_dist({"objects": objs}) == 2  # 8.5 < 8.6 <= 9.0
    kitti = {"type": np.array([3, 0, 1]), "location": np.array([[0, 0, 2.0], [0, 0, 15.0], [0, 0, 30.0]])}
    assert pv.kitti_closest_vehicle({"objects": kitti}) == 1  # pedestrian at 2 m ignored
    assert pv.kitti_closest_vehicle({"objects": {"type": np.array([4]), "location": np.zeros((1, 3))}}) == 3
    sizes = {"train": 50000, "test": 10000}
    assert pv.SPECS["cifar100"].splits(sizes)["val200"] == [("train", 45000, 45200)]
    assert pv.SPECS["eurosat"].splits({"train": 27000})["test"] == [("train", 21600, None)]
    assert set(pv.SPECS) == set(vtab.TASKS)


def vtab_lines(path: Path) -> list[tuple[str, int]]:
    return [(p, int(y)) for p, y in (line.split() for line in path.read_text().splitlines())]


def test_task_configs():
    cfg_dir = ROOT / "configs" / "task" / "vtab"
    base = OmegaConf.load(cfg_dir / "_base.yaml")
    names = sorted(p.stem for p in cfg_dir.glob("*.yaml") if not p.stem.startswith("_"))
    assert names == sorted([*vtab.TASKS, "cifar10_full"])
    for name in names:
        own = OmegaConf.load(cfg_dir / f"{name}.yaml")
        assert list(own.pop("defaults")) == ["/task/vtab/_base@_here_", "_self_"]
        cfg = OmegaConf.merge(base, own)
        info = vtab.TASKS.get(name, vtab.TaskInfo(10, None))
        assert cfg.name == name and cfg.family == "vtab" and cfg.metric == "top1"
        assert cfg.num_classes == info.num_classes == cfg.num_labels and cfg.group == info.group
        p = cfg.protocols.vit_vtab
        assert (p.lr, p.weight_decay, p.batch_size, p.epochs, p.warmup_epochs) == (1e-3, 1e-4, 64, 100, 10)


def test_task_config_composes_with_hydra():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # conftest.compose_cfg keeps its own Hydra initialised across tests
    # through the main config: a VTAB task file also chooses the family's backbone (ViT-B/16)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        over = ["task=vtab/kitti", "task.mode=tune", "task.protocols.vit_vtab.lr=0.01"]
        composed = compose(config_name="config", overrides=over)
        cfg = composed.task
        full = compose(config_name="config", overrides=["task=vtab/cifar10_full", "task.download=true"]).task
    assert composed.backbone.name == "vit_b16_in21k" and composed.protocol == "vit_vtab"
    assert (cfg.name, cfg.num_classes, cfg.group, cfg.mode) == ("kitti", 4, "structured", "tune")
    assert cfg.protocols.vit_vtab.lr == 0.01 and cfg.protocols.vit_vtab.drop_path == 0.1
    assert full.source == "torchvision" and full.download is True and full.num_labels == 10
