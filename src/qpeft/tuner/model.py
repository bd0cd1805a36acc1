"""QuantumModel: the peft tuner (BaseTuner) of Quantum-PEFT, and its registration under peft type "QUANTUM"."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.integrations import init_empty_weights
from torch import nn

from qpeft.errors import QpeftError
from qpeft.quantum import unpack_angles
from qpeft.tuner.config import PEFT_TYPE, QuantumConfig, QuantumConfigError
from qpeft.tuner.hub import HUB, QuantumHub
from qpeft.tuner.layer import QuantumLinear
from qpeft.tuner.state import PERIOD

PREFIX = "quantum_"
_HUB_KEYS = f"{HUB}.quantum_adapters."  # state-dict keys of adapter state: <HUB_KEYS><adapter>.<rest>


class QuantumUnsupportedError(QpeftError, NotImplementedError):
    """A peft feature that Quantum-PEFT does not support (docs/library.md lists what works and what does not)."""


_UNSUPPORTED_DOC = "docs/library.md, 'peft features: what works and what does not'"


def _conv1d_type():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def _shape(module: nn.Module, fan_in_fan_out: bool) -> tuple[int, int]:
    """(d_out, d_in) of a Linear or Conv1D weight."""
    d0, d1 = module.weight.shape
    return (d1, d0) if fan_in_fan_out else (d0, d1)


class QuantumModel(BaseTuner):
    """Quantum-PEFT on a model: every target nn.Linear / Conv1D becomes a `QuantumLinear`; all trainable state
    of an adapter lives in the model's `qpeft_hub` (see qpeft.tuner.hub), so one circuit simulation per
    distinct (n, K) serves every layer.

    Example:

        >>> import qpeft  # registers the "QUANTUM" peft type
        >>> from peft import get_peft_model
        >>> model = get_peft_model(base, qpeft.QuantumConfig(r=8, target_modules=["query", "value"]))
    """

    prefix: str = PREFIX
    tuner_layer_cls = BaseTunerLayer  # both QuantumLinear and the hub take set_adapter / enable_adapters
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _hub(self, model: nn.Module) -> QuantumHub:
        return getattr(model, HUB)

    def _ensure_hub(self, adapter_name: str) -> QuantumHub:
        """The model's hub, created with the first wrapped layer (not before: peft freezes the base model only
        when injecting into a model without tuner layers)."""
        hub = getattr(self.model, HUB, None)
        if not isinstance(hub, QuantumHub):
            hub = QuantumHub(adapter_name)
            self.model.add_module(HUB, hub)
            hub.attach_to(self.model)
        return hub

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """peft's injection, then the adapter's banks for all layers it wrapped (their sizes are known only now),
        their rows in the order of config.module_names (recorded now, or checked for a loaded adapter)."""
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype, low_cpu_mem_usage, state_dict)
        hub = getattr(model, HUB, None)
        if not isinstance(hub, QuantumHub) or adapter_name not in hub.pending:
            return
        config = self.peft_config[adapter_name]
        name_of = {id(module): name for name, module in model.named_modules()}
        config.check_module_names(
            [name_of[id(layer)] for layer, *_ in hub.pending[adapter_name]], adapter_name
        )
        with init_empty_weights() if low_cpu_mem_usage else contextlib.nullcontext():  # as peft's layers
            hub.build(adapter_name, self.peft_config[adapter_name])
        self.set_adapter(self.active_adapters, inference_mode=self.peft_config[adapter_name].inference_mode)
        if adapter_name not in self.active_adapters:  # an added adapter is not trainable until set active
            hub.quantum_adapters[adapter_name].requires_grad_(False)

    def _create_and_replace(
        self,
        config: QuantumConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs,
    ) -> None:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        conv1d = _conv1d_type()
        if isinstance(base, conv1d):
            if not config.fan_in_fan_out:
                config.fan_in_fan_out = True  # as peft's LoRA does, silently: Conv1D stores (in, out)
        elif isinstance(base, nn.Linear):
            if config.fan_in_fan_out:
                warnings.warn(
                    "fan_in_fan_out is set to True but the target module is nn.Linear: setting it False",
                    stacklevel=2,
                )
                config.fan_in_fan_out = False
        else:
            raise QuantumConfigError(
                f"QuantumConfig.target_modules matched {current_key} ({type(base).__name__}); Quantum-PEFT adapts "
                "nn.Linear and Conv1D modules: narrow target_modules"
            )
        d_out, d_in = _shape(base, config.fan_in_fan_out)
        k = config.rank_for(d_out, d_in, current_key)
        if isinstance(target, QuantumLinear):
            self._ensure_hub(adapter_name)
            target.update_layer(adapter_name, config, k)
        else:
            self._replace_module(
                parent,
                target_name,
                QuantumLinear(target, adapter_name, self._ensure_hub(adapter_name), config, k),
                target,
            )

    def add_weighted_adapter(self, *args, **kwargs) -> None:
        """Not supported: refused with QuantumUnsupportedError (as peft's AdaLoRA refuses it)."""
        raise QuantumUnsupportedError(
            "Quantum-PEFT does not support add_weighted_adapter: a weighted sum of adapters' updates s U diag(lam) "
            "V^T is not itself one (its factors are not one circuit's). Merge the adapters into the weights "
            f"instead (merge_adapter(adapter_names=[...])). See {_UNSUPPORTED_DOC}."
        )

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs) -> Iterator[None]:
        """PeftModel.forward / generate enter this with the call's keyword arguments: the hub's forward_pass
        opens here, inside any autocast that wraps PeftModel.forward (accelerate's). Mixed adapter batches
        (`adapter_names=`) and aLoRA offsets are LoRA features, refused rather than silently ignored."""
        for arg in ("adapter_names", "alora_offsets"):
            if kwargs.get(arg) is not None:
                raise QuantumUnsupportedError(
                    f"Quantum-PEFT does not support {arg}= (mixed adapter batches are a LoRA feature): run one "
                    f"batch per adapter, switching with set_adapter. See {_UNSUPPORTED_DOC}."
                )
        hub = getattr(self.model, HUB, None)
        with hub.forward_pass(self.model) if isinstance(hub, QuantumHub) else contextlib.nullcontext():
            yield

    def _unload_and_optionally_merge(self, *args, **kwargs):
        model = super()._unload_and_optionally_merge(*args, **kwargs)
        hub = getattr(model, HUB, None)
        if isinstance(hub, QuantumHub):
            hub.detach_from(model)
            delattr(model, HUB)
        return model

    def update_rank_mask(self, global_step: int) -> None:
        """Adaptive rank mask of the active adapters (rank_mask='adaptive'): call after backward, before zero_grad,
        as AdaLoRA's update_and_allocate."""
        hub = self._hub(self.model)
        for name in self.active_adapters:
            if name in hub.quantum_adapters:
                hub.quantum_adapters[name].update_rank_mask(global_step)

    # Saving: the hub's keys carry the adapter name in the middle; angles are bit-packed when quantised.

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        head, marker, rest = key.partition(_HUB_KEYS)
        if marker and rest.startswith(adapter_name + "."):
            return head + marker + rest[len(adapter_name) + 1 :]
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        out = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        for key in [k for k in out if _HUB_KEYS in k and ".mask_k" in k]:
            out[key] = out[key].bool()  # 0/1: one byte each
        if (
            config.quant_bits is not None
        ):  # the banks' packed angles (refreshed by state_dict()) stand for theta
            out = {k: v for k, v in out.items() if not (_HUB_KEYS in k and k.endswith(".theta"))}
        return out

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        state_dict = dict(state_dict)
        for key in [
            k for k in state_dict if k.endswith(".theta_packed")
        ]:  # theta too: nothing reads as missing
            base = key[: -len("_packed")]
            shape = tuple(state_dict[base + "_shape"].tolist())
            state_dict[base] = unpack_angles(state_dict[key], config.quant_bits, shape, PERIOD)
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        # unpacked angles and bool masks take the dtype of the model's tensors (loading may assign, not copy)
        own = {k: v.dtype for k, v in model.state_dict().items() if _HUB_KEYS.rstrip(".") in k}
        return {k: v.to(own[k]) if k in own and v.dtype != own[k] else v for k, v in remapped.items()}


def register() -> None:
    """Make "QUANTUM" a peft type: get_peft_model, PeftModel.from_pretrained, AutoPeftModel..., transformers'
    load_adapter then work with QuantumConfig. Idempotent; `import qpeft` calls it."""
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )

    for mapping, value in (
        (PEFT_TYPE_TO_CONFIG_MAPPING, QuantumConfig),
        (PEFT_TYPE_TO_TUNER_MAPPING, QuantumModel),
        (PEFT_TYPE_TO_PREFIX_MAPPING, PREFIX),
    ):
        present = mapping.get(PEFT_TYPE)
        # a reloaded qpeft brings new classes of the same name: replace them; anything else is a clash
        if present is not None and _name(present) != _name(value):
            raise QuantumConfigError(f"peft type {PEFT_TYPE.value!r} is already registered to {present!r}")
        mapping[PEFT_TYPE] = value


def _name(entry) -> str:
    """A registry entry's identity across reloads: a class's qualified name, or the prefix string itself."""
    return f"{entry.__module__}.{entry.__qualname__}" if isinstance(entry, type) else str(entry)
