"""Quantum-PEFT in the harness: the `quantum` and `quantum_taylor` adapters, built on the peft tuner
`qpeft.tuner` (one implementation; docs/method.md section 4).

`apply` turns the harness's adapter settings (`adapter.*`) into a `QuantumConfig` and wraps the model in a
`PeftModel` (the adapter's state lives on the tuner, `model.base_model.hub`; the head trains in place, and the
Trainer saves it beside the adapter: qpeft.hf_trainer). The module-level functions are the harness's interface: on_step (adaptive rank mask), merge / unmerge,
others_at (adapter_lr), record_extra, and the adapter file (save_adapter, adapter_file_bytes).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file
from torch import Tensor, nn

from qpeft.adapters import in_head, target_modules
from qpeft.errors import QpeftError
from qpeft.tuner import QuantumLinear, QuantumModel
from qpeft.tuner.config import QuantumConfigError
from qpeft.tuner.hub import HUB, QuantumHub
from qpeft.tuner.state import QuantumAdapterState

if TYPE_CHECKING:
    from qpeft.adapters.quantum_method import QuantumCommonSettings

ADAPTER = "default"
SAFETENSORS_METADATA = {"format": "pt"}  # what peft's save_pretrained writes into the file's header


class AdapterConfigError(QpeftError, ValueError):
    """A quantum adapter setting that cannot work for this model; the message names the setting."""


def _conv1d_type():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


# the tuner's field names that the harness calls otherwise (adapter.<setting>)
SETTING_NAMES = {"r": "rank", "depth": "layers"}


def as_setting(message: str) -> str:
    """A QuantumConfig error as the harness user reads it: `QuantumConfig.r=1000` -> `adapter.rank=1000`."""
    return re.sub(r"QuantumConfig\.(\w+)", lambda m: "adapter." + SETTING_NAMES.get(m[1], m[1]), message)


def apply(
    model: nn.Module, settings: QuantumCommonSettings, targets: list[str], head: list[str], total_steps: int
) -> nn.Module:
    """The model as a PeftModel with Quantum-PEFT on every target Linear/Conv1D (not in the head); the backbone
    frozen, the head trainable."""
    if isinstance(model, PeftModel) or any(isinstance(m, QuantumLinear) for m in model.modules()):
        raise AdapterConfigError("the model already carries a quantum adapter; build a fresh model")
    conv1d = _conv1d_type()
    found = target_modules(model, targets, head)
    for name, mod in found.items():  # (the tuner checks too, but names its own field, not adapter.targets)
        if not isinstance(mod, (nn.Linear, conv1d)):
            raise AdapterConfigError(
                f"adapter.targets matched {name} ({type(mod).__name__}); the quantum adapter needs nn.Linear or "
                "Conv1D modules: narrow adapter.targets"
            )
    config = settings.quantum_config(sorted(found), total_steps)
    try:  # task_type None: PeftModel's forward calls the model itself (float32 adapter, as get_peft_model's)
        peft_model = PeftModel(model, config, ADAPTER)
    except QuantumConfigError as e:  # what depends on the model: a rank above a layer's width
        raise AdapterConfigError(as_setting(str(e))) from e
    # peft froze everything but the adapter (the backbone too); the head trains as well
    for name, p in peft_model.named_parameters():
        if in_head(name, head):
            p.requires_grad = True
    return peft_model


def _hub(model: nn.Module) -> QuantumHub:
    if not (isinstance(model, PeftModel) and isinstance(model.base_model, QuantumModel)):
        raise ValueError("model has no quantum adapter: call qpeft.adapters.quantum.apply first")
    return model.base_model.hub


def _state(model: nn.Module) -> QuantumAdapterState:
    """The adapter's trainable state: banks, lam, masks, num_simulations."""
    return _hub(model).quantum_adapters[ADAPTER]


def _layers(model: nn.Module) -> list[QuantumLinear]:
    return [m for m in model.modules() if isinstance(m, QuantumLinear)]


def masked_lam_entries(model: nn.Module) -> int:
    """Entries of lam that a rank mask keeps at zero for good: K - rank_mask per matrix with a fixed mask, and
    K - target_rank with the adaptive one (its final budget, as AdaLoRA's count). They are parameters in name
    only (no gradient, zero from the start), so the published-style count leaves them out; the adapter file
    still stores them (adapter_file_bytes)."""
    state = _state(model)
    mask = state.config.rank_mask
    if mask is None:
        return 0
    total = 0
    for lam in state.lam.values():
        rows, k = lam.shape
        kept = mask if isinstance(mask, int) else state.target_rank(k)
        total += rows * (k - kept)
    return total


def others_at(groups: list[dict], model: nn.Module, lr: float) -> list[dict]:
    """`groups` with every parameter that is not Quantum-PEFT's own (circuits, lam: the head) in groups at `lr`,
    their weight decay unchanged."""
    ours = {
        id(p)
        for hub in model.modules()
        if isinstance(hub, QuantumHub)
        for state in hub.quantum_adapters.values()
        for p in state.parameters()
    }
    out = []
    for g in groups:
        mine = [p for p in g["params"] if id(p) in ours]
        theirs = [p for p in g["params"] if id(p) not in ours]
        out += [{**g, "params": mine}] if mine else []
        out += [{**g, "params": theirs, "lr": lr}] if theirs else []
    return out


def merge(model: nn.Module) -> None:
    """Fold s U diag(lam) V^T into each base weight (quantised angles if quant_bits); a safe merge, so W0 is kept
    for unmerge (the harness trains on after evaluating merged)."""
    for layer in _layers(model):
        if not layer.merged:
            layer.merge(safe_merge=True)


def unmerge(model: nn.Module) -> None:
    """Restore every merged base weight to its saved W0 exactly."""
    for layer in _layers(model):
        if layer.merged:
            layer.unmerge()


def on_step(model: nn.Module, global_step: int) -> None:
    """Adaptive rank mask: after each optimizer step, before the gradients are zeroed."""
    _state(model).update_rank_mask(global_step)


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter file's tensors, as PeftModel.save_pretrained writes them (angles bit-packed with quant_bits).
    On the meta device: zeros of the right shapes and dtypes (what a size needs)."""
    hub = _hub(model)
    sd = {  # the adapter's state alone (peft's would add nothing else: no modules_to_save, no bias)
        f"base_model.{HUB}.{k}": torch.zeros(v.shape, dtype=v.dtype) if v.is_meta else v
        for k, v in hub.state_dict().items()
    }
    sd = get_peft_model_state_dict(model, state_dict=sd, adapter_name=ADAPTER)
    # the keys PeftModel.save_pretrained writes, so PeftModel.from_pretrained(base, run folder) loads the file
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def load_adapter_state_dict(model: nn.Module, sd: dict[str, Tensor]) -> None:
    """Load an adapter_state_dict into a model prepared by apply() with the same settings and targets."""
    result = set_peft_model_state_dict(model, sd, adapter_name=ADAPTER)
    missing = [k for k in result.missing_keys if f".{HUB}." in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"adapter state does not fit this model: missing {missing}, unexpected {result.unexpected_keys}"
        )


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write adapter_model.safetensors and adapter_config.json (what PeftModel.save_pretrained writes for this
    adapter) into `directory`; returns the safetensors path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "adapter_model.safetensors"
    save_file(adapter_state_dict(model), str(path), metadata=SAFETENSORS_METADATA)
    config = model.peft_config[ADAPTER].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


def adapter_file_bytes(model: nn.Module) -> int:
    """Size in bytes of the adapter_model.safetensors that save_adapter (and save_pretrained) writes, header
    included (works on the meta device)."""
    return len(safetensors_bytes(adapter_state_dict(model), metadata=SAFETENSORS_METADATA))


def record_extra(model: nn.Module) -> dict:
    """Facts for the run record: mapping, L or order, K, matrices, groups, adapter file size, quantisation, mask."""
    state = _state(model)
    c = state.config
    ks = sorted({lam.shape[1] for lam in state.lam.values()})
    masks = [state.mask(k) for k in state.lam]
    return {
        "mapping": c.mapping,
        "layers": c.depth if c.mapping == "pauli" else None,
        "order": c.order if c.mapping == "taylor" else None,
        "rank": ks[0] if len(ks) == 1 else ks,
        "alpha": c.alpha,
        "scaling": c.scaling,
        "adapted_matrices": len(state.index),
        # LoRA r=8 on the same matrices, r (d_in + d_out) each: the paper's comparison, printed by the demo
        "lora_r8_params": sum(8 * (i.u.n + i.v.n) for i in state.index),
        "circuit_groups": len(state.banks),
        "adapter_file_bytes": adapter_file_bytes(model),
        "quant_bits": c.quant_bits,
        "quant_mode": c.quant_mode if c.quant_bits is not None else None,
        "rank_mask": c.rank_mask,
        "active_rank_mean": None
        if masks[0].is_meta
        else sum(float(m.sum()) for m in masks) / len(state.index),
    }
