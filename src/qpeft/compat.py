"""Per-instance fixes for transformers bugs that qpeft's paths reach. Nothing here patches a class or a
library process-wide: each fix rebinds a method on the built model's own submodules (a `types.MethodType`,
so `copy.deepcopy` of the model rebinds it to the copy).

DeBERTa (v1 and v2) under autocast (transformers issue 35332, PR 35336, unfixed in 5.17 / 5.18). The
self-attention masks its scores with

    attention_scores.masked_fill(~mask, torch.finfo(query_layer.dtype).min)

Under bf16 / fp16 autocast the scores come out of `bmm` in the low precision, but `query_layer` keeps the
dtype of whatever produced it. When that is float32, the fill value -3.40e38 does not fit bfloat16 (whose
largest magnitude is 3.39e38) nor float16, and masked_fill raises "value cannot be converted to type
c10::BFloat16 without overflow". `query_layer` is float32 under autocast when
- the adapter wrapping `query_proj` returns its input's dtype rather than autocast's: peft's OFT and BOFT
  rotate the float32 input and cast their result back to it (measured on CPU, tests/test_precision.py);
- DeBERTa v1 adds its float32 `q_bias` parameter to the query (type promotion back to float32).
Plain nn.Linear, peft LoRA / AdaLoRA and qpeft's quantum layers return autocast's dtype and do not trigger it.

The fix: the attention's `transpose_for_scores`, through which every query, key and value tensor passes
before the score products, casts a float32 result to the active autocast dtype. Under autocast those
tensors feed `bmm` / `matmul`, which cast them to that dtype anyway; the fill value now comes from the
dtype the scores actually have. The only numerical change: the division of the keys by the score scale
(v1: the query's bias addition) is rounded in that dtype, as it already is whenever `query_proj` returns
it (LoRA, plain Linear). Without autocast nothing changes (tested bitwise, tests/test_precision.py).
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn


def _transpose_for_scores_autocast(self: nn.Module, x: Tensor, *args, **kwargs) -> Tensor:
    out = type(self).transpose_for_scores(self, x, *args, **kwargs)
    device = out.device.type
    if out.dtype == torch.float32 and torch.is_autocast_enabled(device):
        out = out.to(torch.get_autocast_dtype(device))
    return out


def _deberta_attention_types() -> tuple[type, ...]:
    from transformers.models.deberta.modeling_deberta import DisentangledSelfAttention as V1
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention as V2

    return V1, V2


def fix_deberta_autocast_mask(model: nn.Module) -> int:
    """Make DeBERTa's attention mask fill safe under autocast on this model instance (see the module
    docstring); returns the number of attention modules fixed (0 for other architectures)."""
    types_ = _deberta_attention_types()
    fixed = 0
    for module in model.modules():
        if isinstance(module, types_):
            module.transpose_for_scores = types.MethodType(_transpose_for_scores_autocast, module)
            fixed += 1
    return fixed


def apply(model: nn.Module) -> nn.Module:
    """Every per-instance fix qpeft applies to a freshly built transformers model (backbones.build)."""
    fix_deberta_autocast_mask(model)
    return model
