"""LoRA, AdaLoRA, OFT and BOFT through Hugging Face peft (pinned), behind qpeft's adapter interface.

The head (classifier, and DeBERTa's pooler) goes to peft's `modules_to_save`, so it trains with every
method as in the reference AdaLoRA code. Hugging Face models get peft's task-specific wrapper
(SEQ_CLS / CAUSAL_LM); any other module (the timm `ImageClassifier`) gets `PeftModel` with a forward
that goes through the tuner, so AdaLoRA's orthogonal regulariser (added to `outputs.loss` inside
`AdaLoraModel.forward`) is kept: plain `PeftModel.forward` calls the wrapped model directly and skips it.

AdaLoRA parameter count (the convention of the AdaLoRA paper, Table 1 and Table 7): a triplet
(P column, lambda, Q row) of a `d_out x d_in` matrix costs `d_in + d_out + 1`; the count is the final
budget, `sum_m r_m * (d_in_m + d_out_m + 1)` over the adapted matrices with their final ranks `r_m`.
Before any allocation the final ranks are unknown and the nominal final budget is used: `target_r` per
matrix, i.e. b(T) = target_r * n_matrices triplets. `record_extra` also logs the allocated count (every
lora_A / lora_B / lora_E parameter, what the optimizer holds) and the rank pattern.
"""

from __future__ import annotations

import contextlib
import math

import peft
import torch
from peft import AdaLoraConfig, BOFTConfig, LoraConfig, OFTConfig, PeftModel, get_peft_model
from peft.tuners.adalora import AdaLoraModel
from peft.tuners.boft import layer as boft_layer
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from qpeft.adapters import in_head, target_modules


class PeftModelThroughTuner(PeftModel):
    """`PeftModel` whose forward goes through the tuner (`base_model`), so AdaLoRA adds its regulariser."""

    def forward(self, *args, **kwargs):
        with self._enable_peft_forward_hooks(*args, **kwargs):
            kwargs = {k: v for k, v in kwargs.items() if k not in self.special_peft_forward_args}
            return self.base_model(*args, **kwargs)


class _TorchBlockDiag:
    """Pure-torch stand-in for BOFT's compiled `fbd_cuda` block-diagonal kernel.

    Without the compiled extension (no nvcc / ninja, or a CPU) peft silently sets
    `boft_n_butterfly_factor = 1`, which changes the method; this keeps the requested factor.
    """

    @staticmethod
    def forward(x: torch.Tensor) -> list[torch.Tensor]:
        n, d, h, _ = x.shape
        eye = torch.eye(d, device=x.device, dtype=x.dtype)
        return [torch.einsum("ndij,de->ndiej", x, eye).reshape(n, d * h, d * h)]

    @staticmethod
    def backward(grad: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
        n, d, h, _ = x.shape
        return [grad.reshape(n, d, h, d, h).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2).contiguous()]


_PEFT_BOFT_FORWARD = boft_layer.Linear.forward


def _boft_linear_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's BOFT Linear forward, same math, without its dense N x N products.

    peft builds the rotation R = prod_i P_i blockdiag(B_i) P_i^T as N x N matrices (O(N^3) per butterfly
    factor per step: 10 s a step for MiniLM on 2 cores) and computes base(x R). Here the rotation goes to
    the weight instead, W R^T, block by block after index permutations (O(d_out N H), whatever the
    batch), and x meets one ordinary matmul: half the step time of rotating x (MiniLM, 32 x 64, CPU).
    Parity with peft's forward, gradients included: tests/test_baselines.py.
    """
    dtype = x.dtype
    base = self.base_layer
    if self.disable_adapters or self.merged or type(base) is not nn.Linear or self.fan_in_fan_out:
        return _PEFT_BOFT_FORWARD(self, x, *args, **kwargs)
    scale = torch.ones(int(self.out_features), device=x.device, dtype=base.weight.dtype)
    rotations = []  # per active adapter: blocks (m, D, H, H)
    for name in self.active_adapters:
        if name not in self.boft_R.keys():
            continue
        R = self.boft_R[name]
        m, d, h, _ = R.shape
        rotations.append(self.boft_dropout[name](self.cayley_batch(R.view(m * d, h, h)).view(m, d, h, h)))
        scale = self.boft_s[name].squeeze(-1) * scale
    # the fixed permutation matrices P (m, N, N) as index vectors, found once per layer and device:
    # x @ P_i = x[..., cols[i]] and x @ P_i^T = x[..., rows[i]]
    perm = getattr(self, "_qpeft_perm", None)
    if perm is None or perm[0].device != x.device:
        P = self.boft_P.to(x.device)
        perm = self._qpeft_perm = (P.argmax(dim=1), P.argmax(dim=2))
    cols, rows = perm
    # x R W^T with R = R_last ... R_first and, within an adapter, R = B_{m-1} ... B_0, B_i = P_i D_i P_i^T:
    # W R^T = W B_0^T ... B_{m-1}^T (first adapter first), and W @ B_i^T permutes, applies D_i^T per block
    weight = base.weight
    for blocks in rotations:
        for i in range(blocks.shape[0]):
            w = weight[:, cols[i]].unflatten(-1, blocks.shape[1:3])
            weight = torch.einsum("odh,dkh->odk", w, blocks[i].to(weight.dtype)).flatten(-2)[:, rows[i]]
    return nn.functional.linear(x, weight * scale[:, None], base.bias).to(dtype)


def dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a target layer: nn.Linear or transformers' Conv1D (GPT-2, weight stored d_in x d_out)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise ValueError(
        f"adapter.targets matches a {type(module).__name__}; peft methods here adapt nn.Linear and Conv1D layers only"
    )


def task_type(model: nn.Module) -> str | None:
    """peft's task type: SEQ_CLS / CAUSAL_LM for Hugging Face models, None for anything else (timm)."""
    if not isinstance(model, PreTrainedModel):
        return None
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "CAUSAL_LM"
    return None


def _schedule_step(value, total_steps: int, key: str) -> int:
    """AdaLoRA's tinit / tfinal: a value in (0, 1) is a fraction of total_steps, anything else a step count."""
    if value is None:
        raise ValueError(f"adapter.{key} is not set and the task protocol gives none: set adapter.{key}=...")
    return int(round(value * total_steps)) if 0 < value < 1 else int(value)


def _check_divides(layers: dict[str, nn.Module], size: int, key: str, what: str) -> None:
    """Every target layer's input width must be a multiple of `size` (OFT / BOFT blocks)."""
    for name, m in layers.items():
        d_in = dims(m)[0]
        if size <= 0 or d_in % size:
            raise ValueError(
                f"{key}={size} does not divide the input width {d_in} of {name} ({what}): choose a divisor of {d_in}"
            )


def peft_config(
    model: nn.Module, cfg, targets: list[str], head: list[str], total_steps: int
) -> peft.PeftConfig:
    """The peft config for `cfg.method`, with the settings checked against the target layers' shapes."""
    layers = target_modules(model, targets, head)
    shapes = [dims(m) for m in layers.values()]
    common = dict(
        target_modules=list(targets),
        modules_to_save=list(head) or None,
        task_type=task_type(model),
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in layers.values()),  # GPT-2 c_attn
    )
    method = cfg.method
    conv1d = [n for n, m in layers.items() if isinstance(m, Conv1D)]
    if method in ("oft", "boft") and conv1d:
        raise ValueError(
            f"peft {peft.__version__} cannot apply {method.upper()} to transformers Conv1D layers ({conv1d[0]}, GPT-2 "
            "style): choose adapter=lora or adalora for this backbone, or adapter.targets of nn.Linear layers"
        )
    if method == "lora":
        r = int(cfg.r)
        smallest = min(min(s) for s in shapes)
        if not 1 <= r <= smallest:
            raise ValueError(f"adapter.r={r} must be between 1 and the smallest target width ({smallest})")
        alpha = cfg.get("alpha") or r  # null and no protocol value: scale alpha / r = 1
        return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=cfg.get("dropout", 0.0), **common)
    if method == "adalora":
        target_r = cfg.get("target_r")
        if target_r is None:
            raise ValueError(
                "adapter.target_r is not set and the task protocol gives none: set adapter.target_r=..."
            )
        init_r = cfg.get("init_r") or math.ceil(1.5 * target_r)  # b(0) = 1.5 b(T) (AdaLoRA paper, Table 7)
        if not 1 <= target_r <= init_r:
            raise ValueError(f"adapter.target_r={target_r} must be between 1 and adapter.init_r={init_r}")
        tinit = _schedule_step(cfg.get("tinit"), total_steps, "tinit")
        tfinal = _schedule_step(cfg.get("tfinal"), total_steps, "tfinal")
        if tinit >= total_steps - tfinal:
            raise ValueError(
                f"AdaLoRA needs adapter.tinit ({tinit}) < total steps ({total_steps}) - adapter.tfinal ({tfinal}): "
                "lower them or give them as fractions of the run (e.g. adapter.tinit=0.1 adapter.tfinal=0.3)"
            )
        return AdaLoraConfig(
            init_r=int(init_r),
            target_r=int(target_r),
            tinit=tinit,
            tfinal=tfinal,
            deltaT=int(cfg.get("deltaT") or 1),
            beta1=cfg.get("beta1", 0.85),
            beta2=cfg.get("beta2", 0.85),
            orth_reg_weight=cfg.get("orth_reg") if cfg.get("orth_reg") is not None else 0.1,
            total_step=total_steps,
            lora_alpha=cfg.get("alpha") or init_r,
            lora_dropout=cfg.get("dropout", 0.0),
            **common,
        )
    if method == "oft":
        block = int(cfg.block_size)
        _check_divides(layers, block, "adapter.block_size", "OFT rotates the input in blocks of this size")
        return OFTConfig(
            r=0,
            oft_block_size=block,
            module_dropout=cfg.get("module_dropout", 0.0),
            coft=cfg.get("coft", False),
            eps=cfg.get("eps", 6e-5),
            block_share=cfg.get("block_share", False),
            use_cayley_neumann=cfg.get("use_cayley_neumann", True),
            **common,
        )
    if method == "boft":
        block, m = int(cfg.block_size), int(cfg.n_butterfly_factor)
        if m < 1:
            raise ValueError(f"adapter.n_butterfly_factor={m} must be >= 1")
        if m > 1 and block % 2:
            raise ValueError(f"adapter.block_size={block} must be even when adapter.n_butterfly_factor > 1")
        span = block * 2 ** (m - 1)
        _check_divides(
            layers, span, "adapter.block_size * 2^(adapter.n_butterfly_factor - 1)", "BOFT butterfly"
        )
        if m > 1 and any((dims(x)[0] // block) % 2 for x in layers.values()):
            raise ValueError(
                f"adapter.block_size={block} must leave an even number of blocks per layer for BOFT"
            )
        boft_layer._FBD_CUDA = boft_layer._FBD_CUDA or _TorchBlockDiag()  # keep the butterfly factor
        boft_layer.Linear.forward = _boft_linear_forward
        return BOFTConfig(
            boft_block_size=block,
            boft_block_num=0,
            boft_n_butterfly_factor=m,
            boft_dropout=cfg.get("dropout", 0.0),
            **common,
        )
    raise ValueError(f"qpeft.adapters.peft_methods does not implement '{method}'")


@contextlib.contextmanager
def _all_on_meta():
    """New tensors on meta; BOFT's butterfly permutation indices still need real integers (CPU)."""
    perm = boft_layer.BOFTLayer.block_butterfly_perm

    def on_cpu(self, *args, **kwargs):
        with torch.device("cpu"):
            return perm(self, *args, **kwargs)

    boft_layer.BOFTLayer.block_butterfly_perm = on_cpu
    try:
        with torch.device("meta"):
            yield
    finally:
        boft_layer.BOFTLayer.block_butterfly_perm = perm


def apply(model: nn.Module, cfg, targets: list[str], head: list[str], total_steps: int) -> nn.Module:
    """Inject the peft method into the target modules; the head modules stay trainable (modules_to_save)."""
    config = peft_config(model, cfg, targets, head, total_steps)
    # a meta model (parameter tables): build every new tensor on meta too, BOFT's dense d_in x d_in
    # permutation buffers included (7B shapes would otherwise take gigabytes of CPU memory)
    on_meta = any(p.is_meta for p in model.parameters())
    with _all_on_meta() if on_meta else contextlib.nullcontext():
        if (
            config.task_type is None
        ):  # what get_peft_model builds for None, with a forward that keeps AdaLoRA's loss
            return PeftModelThroughTuner(model, config)
        return get_peft_model(model, config)


def _adalora(model: nn.Module) -> AdaLoraModel | None:
    tuner = getattr(model, "base_model", None)
    return tuner if isinstance(tuner, AdaLoraModel) else None


def on_step(model: nn.Module, global_step: int) -> None:
    """AdaLoRA's importance update and budget allocation (after optimizer.step, before zero_grad)."""
    tuner = _adalora(model)
    if tuner is not None:
        tuner.update_and_allocate(global_step)


def merge(model: nn.Module) -> None:
    """Fold the adapter into the base weights (peft's merge_adapter)."""
    model.base_model.merge_adapter()


def unmerge(model: nn.Module) -> None:
    """Undo `merge` (peft's unmerge_adapter)."""
    model.base_model.unmerge_adapter()


def _triplet_sizes(model: nn.Module) -> dict[str, int]:
    """AdaLoRA layer name -> cost of one triplet, d_in + d_out + 1."""
    from peft.tuners.adalora import AdaLoraLayer

    return {
        name: layer.in_features + layer.out_features + 1
        for name, layer in model.named_modules()
        if isinstance(layer, AdaLoraLayer)
    }


def rank_pattern(model: nn.Module) -> dict[str, int] | None:
    """AdaLoRA's current rank per adapted layer (from peft's `rank_pattern`); None before any allocation."""
    tuner = _adalora(model)
    pattern = tuner.peft_config[tuner.trainable_adapter_name].rank_pattern if tuner else None
    if not pattern:
        return None
    out = {}
    for key, mask in pattern.items():  # '<layer>.lora_E.default' -> [bool] * init_r
        layer = key.split(".lora_E")[0]
        out[layer] = int(sum(bool(x) for x in (mask.view(-1).tolist() if torch.is_tensor(mask) else mask)))
    return out


def _budget(model: nn.Module) -> dict:
    tuner = _adalora(model)
    config = tuner.peft_config[tuner.trainable_adapter_name]
    sizes = {k.removeprefix("base_model.model."): v for k, v in _triplet_sizes(model).items()}
    ranks = rank_pattern(model)
    return dict(
        target_r=config.target_r,
        init_r=config.init_r,
        n_matrices=len(sizes),
        final_budget_triplets=config.target_r * len(sizes),
        initial_budget_triplets=config.init_r * len(sizes),
        nominal_final_params=config.target_r * sum(sizes.values()),
        final_params=None if ranks is None else sum(r * sizes[k] for k, r in ranks.items()),
        allocated_params=sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n),
        rank_pattern=ranks,
        total_rank=None if ranks is None else sum(ranks.values()),
    )


def adapter_params(model: nn.Module, head: list[str]) -> int:
    """Adapter-only count; for AdaLoRA the final budget (realised ranks once allocated, else nominal)."""
    if _adalora(model) is None:
        return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not in_head(n, head))
    b = _budget(model)
    return b["final_params"] if b["final_params"] is not None else b["nominal_final_params"]


def record_extra(model: nn.Module) -> dict:
    """AdaLoRA: allocated count, final budget, target total rank and the rank pattern; others: nothing."""
    return {"adalora": _budget(model)} if _adalora(model) is not None else {}
