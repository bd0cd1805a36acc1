"""Adapters: one `Method` class per fine-tuning method behind one interface (base.py, docs/design.md).

    settings = settings_from_config(cfg.adapter)      # checked: types, unknown keys, ranges
    method = get_method(settings.method)(settings)
    model = method.apply(model, targets, head, total_steps)

Importing this package registers every built-in method (peft's, the simple references, Quantum-PEFT).
"""

from __future__ import annotations

from qpeft.adapters.base import (
    METHODS,
    AdapterSettings,
    Method,
    freeze_except_head,
    get_method,
    head_params,
    in_head,
    is_target,
    register,
    settings_from_config,
    target_modules,
    trainable_outside_head,
)

# the generic adapter-only count (trainable, outside the head), under its historical name
adapter_params = trainable_outside_head

# the built-in methods register themselves on import (after the helpers above, which they use)
from qpeft.adapters import peft_methods, quantum_method, simple  # noqa: E402, F401

__all__ = [
    "METHODS",
    "AdapterSettings",
    "Method",
    "adapter_params",
    "freeze_except_head",
    "get_method",
    "head_params",
    "in_head",
    "is_target",
    "register",
    "settings_from_config",
    "target_modules",
    "trainable_outside_head",
]
