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
from qpeft.quantum import pack_angles, unpack_angles
from qpeft.tuner.config import PEFT_TYPE, QuantumConfig, QuantumConfigError
from qpeft.tuner.hub import HUB, QuantumHub
from qpeft.tuner.layer import QuantumLinear
from qpeft.tuner.state import PERIOD, QuantumAdapterState

PREFIX = "quantum_"
_HUB_KEYS = (
    f"{HUB}.quantum_adapters."  # state-dict keys of adapter state: base_model.<HUB_KEYS><adapter>.<rest>
)
# keys of adapter files saved when the hub was a submodule of the adapted model (before 2026-12-05)
_OLD_HUB_KEYS = f"base_model.model.{_HUB_KEYS}"


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
    of an adapter lives on this tuner, in its `qpeft_hub` (see qpeft.tuner.hub), as TinyLoRA's and VB-LoRA's
    shared parameters do, so one circuit simulation per distinct (n, K) serves every layer. Shared state on the
    tuner means peft's `inject_adapter_in_model` (and so transformers' `load_adapter`) is refused, as for VeRA:
    use `get_peft_model` / `PeftModel.from_pretrained`.

    Example:

        >>> import qpeft  # registers the "QUANTUM" peft type
        >>> from peft import get_peft_model
        >>> model = get_peft_model(base, qpeft.QuantumConfig(r=8, target_modules=["query", "value"]))
    """

    prefix: str = PREFIX
    tuner_layer_cls = QuantumLinear
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    uses_shared_state: bool = True

    @property
    def hub(self) -> QuantumHub:
        return self._modules[HUB]

    def _pre_injection_hook(self, model: nn.Module, config: QuantumConfig, adapter_name: str) -> None:
        """The hub, before the first adapter (TinyLoRA's precedent). Its hooks on the model open a pass when
        the model itself is called (PeftModel's forward opens one through _enable_peft_forward_hooks)."""
        if HUB not in self._modules:
            self.add_module(HUB, QuantumHub())
            self.hub.attach_to(model)

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
        """The adapter's state first, sized from the modules it adapts (rows in the order of
        config.module_names: recorded now, or checked for a loaded adapter) and put in the hub; then peft's
        injection, each layer taking its rows by module name. Anything refused leaves the model as it was."""
        if state_dict is not None:
            raise QuantumUnsupportedError(
                "Quantum-PEFT adapters are matched by their config's target_modules, not from a state_dict (their "
                f"tensors belong to the circuit banks, not to the layers). See {_UNSUPPORTED_DOC}."
            )
        if adapter_name in self.hub.quantum_adapters:
            raise QpeftError(f"adapter '{adapter_name}' already exists: choose another adapter_name")
        config = self.peft_config[adapter_name]
        shapes = self._target_shapes(model, config)
        if shapes:  # none matched: peft's injection names the problem
            config.check_module_names(list(shapes), adapter_name)
            with init_empty_weights() if low_cpu_mem_usage else contextlib.nullcontext():  # as peft's layers
                state = QuantumAdapterState(config, [shapes[name] for name in config.module_names])
            first = model.get_submodule(config.module_names[0])
            _place(state, (first.get_base_layer() if isinstance(first, BaseTunerLayer) else first).weight)
            self.hub.quantum_adapters[adapter_name] = state
        try:
            super().inject_adapter(model, adapter_name, autocast_adapter_dtype, low_cpu_mem_usage, state_dict)
        except BaseException:
            if adapter_name in self.hub.quantum_adapters:
                self.hub.delete(adapter_name)
            raise

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
        row = config.module_names.index(current_key)  # the pre-scan named every module peft matches
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        # Conv1D stores (in, out): fan_in_fan_out follows the layer type, as in peft's LoRA (a Linear warns)
        if isinstance(base, nn.Linear) and config.fan_in_fan_out:
            warnings.warn(
                "fan_in_fan_out is set to True but the target module is nn.Linear: setting it False",
                stacklevel=2,
            )
        config.fan_in_fan_out = not isinstance(base, nn.Linear)
        if isinstance(target, QuantumLinear):
            target.update_layer(adapter_name, config, row)
        else:
            self._replace_module(
                parent, target_name, QuantumLinear(target, adapter_name, self.hub, config, row), target
            )

    # The shared state: which adapters compute, train, and exist (peft's precedents: TinyLoRA, VB-LoRA).

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        self._activate(inference_mode)

    def _activate(self, inference_mode: bool) -> None:
        """The hub computes the active adapters, and only their state trains (unless inference_mode)."""
        hub = self.hub
        hub.active = [name for name in self.active_adapters if name in hub.quantum_adapters]
        for name, state in hub.quantum_adapters.items():
            state.requires_grad_(name in hub.active and not inference_mode)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        super()._mark_only_adapters_as_trainable(model)
        inference = any(
            self.peft_config[name].inference_mode for name in self.active_adapters if name in self.peft_config
        )
        self._activate(inference)

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        super()._enable_adapter_layers(enabled)
        self.hub.enabled = enabled

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        if adapter_name in self.hub.quantum_adapters:
            self.hub.delete(adapter_name)
        self._activate(inference_mode=False)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """peft's upcast of a half-precision adapter to float32, for the hub's state too (as TinyLoRA's)."""
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype)
        if not autocast_adapter_dtype or adapter_name not in self.hub.quantum_adapters:
            return
        for owner in self.hub.quantum_adapters[adapter_name].modules():
            for name, param in list(owner.named_parameters(recurse=False)):
                if param.dtype in (torch.float16, torch.bfloat16):
                    setattr(owner, name, nn.Parameter(param.data.float(), requires_grad=param.requires_grad))

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
        with self.hub.forward_pass(self.model):
            yield

    def _unload_and_optionally_merge(self, *args, **kwargs):
        model = super()._unload_and_optionally_merge(*args, **kwargs)
        self.hub.detach_from(model)
        return model

    def update_rank_mask(self, global_step: int) -> None:
        """Adaptive rank mask of the active adapters (rank_mask='adaptive'): call after backward, before zero_grad,
        as AdaLoRA's update_and_allocate."""
        for name in self.hub.active:
            self.hub.quantum_adapters[name].update_rank_mask(global_step)

    # Saving: peft's hooks alone. The hub's keys carry the adapter name in the middle; with quant_bits the file
    # holds each bank's angles bit-packed (theta_packed, theta_shape) in place of theta.

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        head, marker, rest = key.partition(_HUB_KEYS)
        if marker and rest.startswith(adapter_name + "."):
            return head + marker + rest[len(adapter_name) + 1 :]
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        out = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        out = {k: v for k, v in out.items() if _HUB_KEYS not in k}  # (peft's picks the tuner's state whole)
        mine = f"{_HUB_KEYS}{adapter_name}."
        for key, value in state_dict.items():
            if mine not in key:
                continue
            if ".mask_k" in key:
                out[key] = value.bool()  # 0/1: one byte each
            elif config.quant_bits is not None and key.endswith(".theta"):
                stem = key[: -len(".theta")]
                out[stem + ".theta_packed"] = pack_angles(value.detach().cpu(), config.quant_bits, PERIOD)
                out[stem + ".theta_shape"] = torch.tensor(value.shape, dtype=torch.int32)
            else:
                out[key] = value
        return out

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        old = [k for k in state_dict if k.startswith(_OLD_HUB_KEYS)]
        if old:
            warnings.warn(
                f"adapter '{adapter_name}' was saved when Quantum-PEFT kept its state in the model "
                "(keys base_model.model.qpeft_hub.*): loaded; save it again for the current format",
                stacklevel=3,
            )
        state_dict = {
            ("base_model." + k[len("base_model.model.") :] if k in old else k): v
            for k, v in state_dict.items()
        }
        for key in [k for k in state_dict if k.endswith(".theta_packed")]:
            stem = key[: -len(".theta_packed")]
            shape = tuple(state_dict.pop(stem + ".theta_shape").tolist())
            state_dict[stem + ".theta"] = unpack_angles(state_dict.pop(key), config.quant_bits, shape, PERIOD)
        mine = {k: v for k, v in state_dict.items() if _HUB_KEYS in k}
        remapped = super()._remap_adapter_state_dict_for_load(
            model, config, adapter_name, {k: v for k, v in state_dict.items() if k not in mine}
        )
        own = {k: v.dtype for k, v in model.state_dict().items() if _HUB_KEYS in k}
        for key, value in mine.items():
            head, marker, rest = key.partition(_HUB_KEYS)
            key = f"{head}{marker}{adapter_name}.{rest}"
            # unpacked angles and bool masks take the dtype of the model's tensors (loading may assign, not copy)
            remapped[key] = value.to(own[key]) if key in own and value.dtype != own[key] else value
        return remapped


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
