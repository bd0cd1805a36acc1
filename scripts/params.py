"""Adapter parameters of one setting, counted as the published tables count them (adapter only, head apart).

The backbone is built on the meta device (full-size shapes, no weights, no network) and the adapter is
really injected by its own `apply`, then counted by its module's `adapter_params` (or the generic count).

    python scripts/params.py backbone=deberta_v3_base adapter=lora adapter.r=8    # adapter_params=1327104
    python scripts/params.py backbone=vit_b16_in21k adapter=adalora adapter.target_r=8 adapter.init_r=12

The last line printed is `adapter_params=<int>`.
"""

from __future__ import annotations

import sys
import warnings

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from qpeft import adapters, backbones, train

# AdaLoRA's schedule needs a run length (tinit < total - tfinal); no count depends on it.
TOTAL_STEPS = 1_000_000


class _Resolved(dict):
    """A resolved backbone config with attribute access, its lists plain Python lists.

    Works around `dict(cfg.arch)` in qpeft.backbones keeping OmegaConf ListConfig values, which
    transformers' strict config classes reject (DeBERTa's pos_att_type).
    """

    __getattr__ = dict.__getitem__


def adapter_settings(cfg: DictConfig) -> DictConfig:
    """The adapter settings a run would use: the task protocol fills alpha and AdaLoRA's ranks and schedule."""
    try:
        acfg = train.adapter_config(cfg, train.hyperparameters(cfg))
    except Exception:  # a task without this protocol: the adapter config as given
        acfg = OmegaConf.create(OmegaConf.to_container(cfg.adapter, resolve=True))
    if acfg.method == "adalora":  # a schedule the protocol leaves open changes no count
        for key, value in (("tinit", 0), ("tfinal", 0), ("deltaT", 1)):
            if acfg.get(key) is None:
                acfg[key] = value
    return acfg


def count(cfg: DictConfig) -> dict:
    """Build the backbone on meta, apply the adapter, count; returns the numbers of one table cell."""
    bb = cfg.backbone
    with open_dict(bb):
        bb.meta = True
    acfg = adapter_settings(cfg)
    num_labels = cfg.task.get("num_labels") or cfg.task.get("num_classes") or 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = backbones.build(_Resolved(OmegaConf.to_container(bb, resolve=True)), num_labels)
        head = list(bb.head)
        targets = list(acfg.get("targets") or bb.targets)
        backbone_params = sum(p.numel() for p in model.parameters())
        matrices = len(adapters.target_modules(model, targets, head))
        method = adapters.get_method(acfg.method)(train.adapter_settings(acfg))
        model = method.apply(model, targets, head, TOTAL_STEPS)
    return dict(
        backbone=bb.name,
        adapter=acfg.name,
        targets=",".join(targets),
        matrices=matrices,
        adapter_params=int(method.adapter_params(model, head)),
        head_params=int(adapters.head_params(model, head)),
        backbone_params=int(backbone_params),
    )


def show(row: dict) -> str:
    """A small two-column table of one count."""
    width = max(len(k) for k in row)
    return "\n".join(f"{k:<{width}}  {f'{v:,}' if isinstance(v, int) else v}" for k, v in row.items())


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    row = count(cfg)
    print(show(row))
    print(f"adapter_params={row['adapter_params']}")


if __name__ == "__main__":
    # a count writes nothing: no Hydra output folder, no log file
    sys.argv += [
        "hydra.output_subdir=null",
        "hydra.run.dir=.",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
    ]
    main()
