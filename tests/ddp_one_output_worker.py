"""One rank of tests/test_ddp.py's one-output-layer check (run by torchrun, two ranks, CPU, gloo).

A model whose adapted layers include a one-output head (num_labels=1) and a GPT-2 Conv1D with nf=1 trains a few
steps under DistributedDataParallel *without* find_unused_parameters: DDP then requires every trainable
parameter to receive a gradient each step, and stops at step 2 ("Expected to have finished reduction in the prior
iteration") if one does not. Prints "ok <method> <losses>" on rank 0 for each method named on the command line.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

import qpeft  # noqa: F401  (registers the QUANTUM peft type)
from qpeft.tuner import QuantumConfig


class OneOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = Conv1D(1, 6)  # nf=1: one output
        self.body = nn.Linear(4, 8)
        self.score = nn.Linear(8, 1)  # a num_labels=1 regression head

    def forward(self, x):  # x: (B, 4, 6)
        h = self.conv(x).squeeze(-1)  # (B, 4)
        return self.score(torch.relu(self.body(h))).squeeze(-1)


CONFIGS = {
    "pauli": lambda: QuantumConfig(
        r=1, alpha=2.0, target_modules=["conv", "body", "score"], init_weights=False
    ),
    "pauli_quantised": lambda: QuantumConfig(
        r=1, alpha=2.0, layers=2, quant_bits=4, target_modules=["conv", "score"], init_weights=False
    ),
    "taylor": lambda: QuantumConfig(
        r=1, alpha=2.0, mapping="taylor", target_modules=["conv", "body", "score"], init_weights=False
    ),
    "lora": lambda: LoraConfig(r=1, target_modules=["conv", "body", "score"], init_lora_weights=False),
}


def train(method: str) -> None:
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same model and adapter on both ranks
    model = get_peft_model(OneOutput(), CONFIGS[method]())
    ddp = nn.parallel.DistributedDataParallel(model)  # find_unused_parameters=False, the default
    opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.01)
    g = torch.Generator().manual_seed(1 + rank)
    losses = []
    for _ in range(4):
        x, y = torch.randn(8, 4, 6, generator=g), torch.randn(8, generator=g)
        loss = nn.functional.mse_loss(ddp(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(round(loss.item(), 4))
    assert all(math.isfinite(v) for v in losses), losses
    # every rank holds the same trainable state after the averaged steps (up to the reduction's rounding)
    for name, p in model.named_parameters():
        if p.requires_grad:
            ref = p.detach().clone()
            dist.broadcast(ref, 0)
            assert torch.allclose(ref, p.detach(), atol=1e-6, rtol=0), f"ranks diverged at {name}"
    if rank == 0:
        print("ok", method, losses, flush=True)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    for method in sys.argv[1:]:
        train(method)
    dist.destroy_process_group()
