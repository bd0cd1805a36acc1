"""QuantumModel: the peft tuner (BaseTuner) of Quantum-PEFT, and its registration under peft type "QUANTUM"."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from peft.tuners.tuners_utils import (
    BaseTuner,
    BaseTunerLayer,
    _ExcludedModule,
    _maybe_include_all_linear_layers,
)
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.integrations import init_empty_weights
from torch import nn

from qpeft.errors import QpeftError
from qpeft.quantum import unpack_angles
from qpeft.tuner.config import PEFT_TYPE, QuantumConfig, QuantumConfigError
from qpeft.tuner.hub import HUB, QuantumHub
from qpeft.tuner.layer import QuantumLinear
from qpeft.tuner.state import PERIOD, QuantumAdapterState

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


def _place(state: QuantumAdapterState, weight: torch.Tensor) -> None:
    """The adapter state in the base weight's dtype and on its device, as peft's layers (get_peft_model then
    upcasts a half-precision adapter to float32, autocast_adapter_dtype); the factors are computed in float32
    either way, in float64 for a float64 model (QuantumAdapterState.compute_dtype)."""
    if weight.dtype.is_floating_point:
        state.to(weight.dtype)
    if not state.is_meta:  # meta under low_cpu_mem_usage: loading assigns the tensors
        state.to(weight.device)


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

    def _target_shapes(self, model: nn.Module, config: QuantumConfig) -> dict[str, tuple[int, int, int]]:
        """(d_out, d_in, K) of every module the config adapts, by name in module order: peft's own matching, run
        before any layer is wrapped (VeRA's `_find_dim` precedent), so that the adapter's state is sized and the
        saved module names checked before the model changes."""
        config = _maybe_include_all_linear_layers(
            self._prepare_adapter_config(config, self.get_model_config(model)), model
        )
        conv1d = _conv1d_type()
        inside: list[str] = []  # a tuner layer's own submodules (its base layer) are not targets
        shapes: dict[str, tuple[int, int, int]] = {}
        for key, module in model.named_modules():
            if not key or any(key.startswith(p) for p in inside):
                continue
            if isinstance(module, BaseTunerLayer):
                inside.append(key + ".")
            if isinstance(module, QuantumHub):
                continue
            matched = self._check_target_module_exists(config, key)
            if not matched or isinstance(matched, _ExcludedModule):
                continue
            base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
            if not isinstance(base, (nn.Linear, conv1d)):
                raise QuantumConfigError(
                    f"QuantumConfig.target_modules matched {key} ({type(base).__name__}); Quantum-PEFT adapts "
                    "nn.Linear and Conv1D modules: narrow target_modules"
                )
            d_out, d_in = _shape(base, fan_in_fan_out=isinstance(base, conv1d))
            shapes[key] = (d_out, d_in, config.rank_for(d_out, d_in, key))
        return shapes

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """The adapter's state first, from the shapes of the modules it adapts (rows in the order of
        config.module_names: recorded now, or checked for a loaded adapter); then peft's injection, each layer
        taking its rows by module name. The state joins the hub with the first wrapped layer, so peft's
        set_adapter and inference_mode see it as they see any adapter's weights."""
        if state_dict is not None:
            raise QuantumUnsupportedError(
                "Quantum-PEFT adapters are matched by their config's target_modules, not from a state_dict (their "
                f"tensors belong to the circuit banks, not to the layers). See {_UNSUPPORTED_DOC}."
            )
        hub = getattr(model, HUB, None)
        if isinstance(hub, QuantumHub) and adapter_name in hub.quantum_adapters:
            raise QpeftError(f"adapter '{adapter_name}' already exists: choose another adapter_name")
        config = self.peft_config[adapter_name]
        shapes = self._target_shapes(model, config)
        state = None
        if shapes:  # none matched: peft's injection names the problem
            config.check_module_names(list(shapes), adapter_name)
            with init_empty_weights() if low_cpu_mem_usage else contextlib.nullcontext():  # as peft's layers
                state = QuantumAdapterState(config, [shapes[name] for name in config.module_names])
            first = model.get_submodule(config.module_names[0])
            _place(state, (first.get_base_layer() if isinstance(first, BaseTunerLayer) else first).weight)
        rows = {name: row for row, name in enumerate(config.module_names or [])}
        self._new_adapter = (adapter_name, state, rows)
        try:
            super().inject_adapter(model, adapter_name, autocast_adapter_dtype, low_cpu_mem_usage, state_dict)
        finally:
            self._new_adapter = None
        wrapped = {
            n
            for n, m in model.named_modules()
            if isinstance(m, QuantumLinear) and adapter_name in m.quantum_row
        }
        if wrapped != set(shapes):
            raise QpeftError(
                f"adapter '{adapter_name}': peft wrapped {sorted(wrapped ^ set(shapes))} unlike the pre-scan of "
                "target modules (a Quantum-PEFT bug: please report it)"
            )

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
        name, state, rows = self._new_adapter
        hub = self._ensure_hub(adapter_name)
        if name not in hub.quantum_adapters:  # with the first layer: see inject_adapter
            hub.quantum_adapters[name] = state
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        # Conv1D stores (in, out): fan_in_fan_out follows the layer type, as in peft's LoRA (a Linear warns)
        if isinstance(base, nn.Linear) and config.fan_in_fan_out:
            warnings.warn(
                "fan_in_fan_out is set to True but the target module is nn.Linear: setting it False",
                stacklevel=2,
            )
        config.fan_in_fan_out = not isinstance(base, nn.Linear)
        if isinstance(target, QuantumLinear):
            target.update_layer(adapter_name, config, rows[current_key])
        else:
            layer = QuantumLinear(target, adapter_name, hub, config, rows[current_key])
            self._replace_module(parent, target_name, layer, target)

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
