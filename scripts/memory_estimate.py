"""Training memory of a large text backbone on one GPU, from a CPU measurement (no GPU, no weights download).

    python scripts/memory_estimate.py --backbone mistral_7b --adapter lora --batch 32 --seq 512

Weights: the exact parameter count of the full model, built on the meta device. Activations: what autograd
saves for the backward, measured with `torch.autograd.graph.saved_tensors_hooks` (distinct storages, bytes)
on random-weight models of the real layer shape with 1 and 2 layers, at two token counts, under the
Trainer's bf16 (CPU autocast, float32 weights), with the adapter applied. Their difference gives, per
layer, a constant part (the bf16 copies of the frozen weights that autocast saves for the input gradient)
and a per-token part; both scale exactly to the full depth and the batch:

- without checkpointing every layer's saved tensors live until the backward;
- with (non-reentrant) gradient checkpointing each layer keeps only its input (float32 hidden states) and one
  layer's saved tensors exist at a time, during its recomputation.

Not counted: the CUDA context and kernels' workspaces (~1 GB), allocator fragmentation, the loss/logits
(small for classification), and attention kernels that save less on a GPU (flash attention keeps only a
log-sum-exp per row; the CPU measurement uses the SDPA path PyTorch picks on CPU).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # conftest.compose_cfg: the config exactly as run.py composes it
GIB = 2**30


def compose(backbone: str, adapter: str, layers: int | None, meta: bool):
    from conftest import compose_cfg
    from omegaconf import OmegaConf, open_dict

    from qpeft import train

    cfg = compose_cfg([f"backbone={backbone}", f"adapter={adapter}", "protocol=adalora_deberta"])
    acfg = train.adapter_config(cfg, train.hyperparameters(cfg))
    bb = OmegaConf.create(OmegaConf.to_container(cfg.backbone, resolve=True))
    with open_dict(bb):
        bb.meta, bb.kind, bb.tokenizer = meta, "hf_config", None
        if layers is not None:
            bb.arch.num_hidden_layers = layers
    with open_dict(acfg):
        if acfg.method == "adalora":  # any valid schedule: only the shapes matter here
            acfg.tinit, acfg.tfinal = 0, 0
    return bb, acfg


def build(backbone: str, adapter: str, layers: int | None, meta: bool):
    from qpeft import adapters, backbones

    bb, acfg = compose(backbone, adapter, layers, meta)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = backbones.build(bb, num_labels=2)
        model = adapters.get(acfg.method).apply(model, acfg, list(bb.targets), list(bb.head), 1000)
    return model, bb


def saved_bytes(model: torch.nn.Module, tokens: int) -> int:
    """Bytes of the distinct storages autograd saves in one bf16-autocast forward of 1 x `tokens`."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    ids = torch.randint(1, 1000, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([1]))
    out.loss.backward()
    return sum(seen.values())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="mistral_7b")
    p.add_argument("--adapter", default="lora")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--probe-tokens", default="32,64", help="two token counts for the CPU measurement")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    meta, bb = build(args.backbone, args.adapter, None, meta=True)
    n_layers = bb.arch.num_hidden_layers
    hidden = bb.arch.hidden_size
    n_total = sum(p.numel() for p in meta.parameters())
    n_train = sum(p.numel() for p in meta.parameters() if p.requires_grad)
    del meta

    t1, t2 = (int(x) for x in args.probe_tokens.split(","))
    grid = {}
    for layers in (1, 2):
        model, _ = build(args.backbone, args.adapter, layers, meta=False)
        grid[layers] = {t: saved_bytes(model, t) for t in (t1, t2)}
        del model
    per_layer = {t: grid[2][t] - grid[1][t] for t in (t1, t2)}
    per_token = (per_layer[t2] - per_layer[t1]) / (t2 - t1)
    layer_const = per_layer[t1] - per_token * t1
    rest_per_token = ((grid[1][t2] - per_layer[t2]) - (grid[1][t1] - per_layer[t1])) / (t2 - t1)
    rest_const = grid[1][t1] - per_layer[t1] - rest_per_token * t1

    tokens = args.batch * args.seq
    weights = 4 * n_total  # the Trainer's bf16 is autocast: the weights stay float32
    trainable = 16 * n_train  # float32 parameter, gradient and AdamW's two moments
    layer = layer_const + per_token * tokens
    rest = rest_const + rest_per_token * tokens
    plain = weights + trainable + n_layers * layer + rest
    # `rest` is negative when the first layer saves less than the others (its input needs no gradient):
    # exact for the sum over all layers; with checkpointing only one layer is live, so leave it out
    ckpt = weights + trainable + n_layers * 4 * tokens * hidden + layer + max(rest, 0)
    print(f"{args.backbone} + {args.adapter}: {n_total / 1e9:.3f}B parameters, {n_train:,} trainable")
    print(
        f"measured per layer (CPU, bf16 autocast): {layer_const / GIB:.3f} GiB constant (bf16 weight copies)"
    )
    print(f"  + {per_token / 2**10:.1f} KiB per token; outside the layers (embedding, head, minus what the")
    print(
        f"  first layer saves less) {rest_const / GIB:.3f} GiB + {rest_per_token / 2**10:.1f} KiB per token"
    )
    print(f"batch {args.batch} x {args.seq} = {tokens:,} tokens:")
    print(f"  weights (float32)                 {weights / GIB:7.1f} GiB")
    print(f"  trainable + grads + AdamW         {trainable / GIB:7.1f} GiB")
    print(
        f"  activations, no checkpointing     {(n_layers * layer + rest) / GIB:7.1f} GiB  -> total {plain / GIB:.1f} GiB"
    )
    act = n_layers * 4 * tokens * hidden + layer + max(rest, 0)
    print(f"  activations, checkpointing        {act / GIB:7.1f} GiB  -> total {ckpt / GIB:.1f} GiB")


if __name__ == "__main__":
    main()
