"""The transformers Trainer as qpeft runs it: TrainingArguments from the checked settings, the optimiser built
with a method's own parameter groups (Quantum-PEFT's circuit learning rate), and autocast entered around the
model's call for a Quantum-PEFT adapter, whose checkpoints also hold its trainable state whole (`Trainer`)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import TrainingArguments

from qpeft.config import TrainerSettings
from qpeft.errors import QpeftError


class Trainer(transformers.Trainer):
    """transformers' Trainer. With a Quantum-PEFT adapter in the model, mixed precision's autocast is also entered
    around the model's call (compute_loss, prediction_step), not only inside its forward where accelerate puts
    it: the adapter's forward pass opens in the model's forward-pre-hook and decides its compute dtype then
    (qpeft.tuner QuantumHub.forward_pass). Its checkpoints also hold its trainable state whole (below). Other
    methods run as in transformers' own Trainer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from qpeft.tuner import QuantumLinear

        # a Quantum-PEFT adapter: autocast around the call, and its trainable state in each checkpoint
        self.quantum = any(isinstance(m, QuantumLinear) for m in self.model.modules())

    # A Quantum-PEFT checkpoint: the Trainer saves a PeftModel as its adapter file, which holds quantised angles
    # (not QAT's float latents) and not the head, trained in place. So the trainable state is saved beside it,
    # whole, and loaded after it on resume.

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.quantum:
            folder = Path(output_dir or self.args.output_dir)
            save_file(
                _trainable_state(self.accelerator.unwrap_model(self.model)), str(folder / TRAINABLE_FILE)
            )

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: torch.nn.Module | None = None
    ) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / TRAINABLE_FILE
        if self.quantum and path.is_file():
            target = self.accelerator.unwrap_model(model if model is not None else self.model)
            result = target.load_state_dict(load_file(str(path)), strict=False)
            if result.unexpected_keys:
                raise QpeftError(f"{path} does not fit the model: {result.unexpected_keys[:3]}")

    def autocast_smart_context_manager(
        self, cache_enabled: bool | None = True
    ) -> contextlib.AbstractContextManager:
        if self.quantum:
            return self.accelerator.autocast()
        return super().autocast_smart_context_manager(cache_enabled)


TRAINABLE_FILE = "qpeft_trainable.safetensors"  # a Quantum-PEFT checkpoint's trainable state, float


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter, and the adapter's buffers (masks and their scores), by state-dict key."""
    from qpeft.tuner.hub import HUB

    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if k in names or f".{HUB}." in k
    }


def use_cpu(trainer: TrainerSettings) -> bool:
    if trainer.device == "cuda" and not torch.cuda.is_available():
        raise QpeftError("trainer.device=cuda but no CUDA device is visible: set trainer.device=auto or cpu")
    return trainer.device == "cpu" or not torch.cuda.is_available()


def per_device_batch(batch_size: int, world_size: int) -> int:
    """trainer.batch_size is the global batch (the protocol's, whatever the number of processes): each of
    `world_size` data-parallel processes takes an equal share of it."""
    if batch_size % world_size:
        raise QpeftError(
            f"trainer.batch_size={batch_size} is the global batch and must split evenly over the {world_size} "
            f"processes: set it to a multiple of {world_size} (or run {world_size} processes that divide it)"
        )
    return batch_size // world_size


def training_args(
    trainer: TrainerSettings,
    run_dir: Path,
    seed: int,
    text_task: bool,
    run_name: str,
    wandb: bool,
    keep_logits: bool = True,
    world_size: int = 1,
    token_loss: bool = False,
) -> TrainingArguments:
    cpu = use_cpu(trainer)
    bf16 = trainer.precision == "bf16" or (
        trainer.precision == "auto" and not cpu and torch.cuda.is_bf16_supported()
    )
    if trainer.sampling == "group_by_length" and not text_task:
        raise QpeftError("trainer.sampling=group_by_length needs tokenised text: use random for image tasks")
    # transformers 5: warmup_steps < 1 is a fraction of the run
    warmup = trainer.warmup_steps or trainer.warmup_ratio or 0.0
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=per_device_batch(trainer.batch_size, world_size),
        per_device_eval_batch_size=trainer.eval_batch_size,
        gradient_accumulation_steps=trainer.grad_accum,
        num_train_epochs=trainer.epochs,
        max_steps=trainer.max_steps,
        learning_rate=trainer.lr,
        weight_decay=trainer.weight_decay,
        warmup_steps=warmup,
        lr_scheduler_type=trainer.scheduler,
        train_sampling_strategy=trainer.sampling,
        eval_strategy="steps" if trainer.eval_steps else "epoch" if trainer.eval_every_epoch else "no",
        eval_steps=trainer.eval_steps,
        save_strategy="steps",
        save_steps=trainer.save_steps,
        save_total_limit=trainer.save_total_limit,
        logging_steps=trainer.logging_steps,
        logging_nan_inf_filter=False,
        seed=seed,
        data_seed=seed,
        bf16=bf16,
        fp16=trainer.precision == "fp16",
        use_cpu=cpu,
        dataloader_num_workers=trainer.num_workers,
        remove_unused_columns=False,
        max_grad_norm=trainer.max_grad_norm,  # 0 = no clipping (LoRA's E2E recipe)
        adam_epsilon=trainer.adam_epsilon,
        label_smoothing_factor=trainer.label_smoothing,  # causal LMs: the Trainer shifts the labels
        prediction_loss_only=not keep_logits,  # E2E is scored from decoded text, not logits
        # Several processes: a causal LM's loss is a sum over tokens divided by `num_items_in_batch`, which
        # the Trainer then counts over all ranks (and scales back by their number): the global token mean.
        # A classifier's loss is a per-example mean that ignores that count, so the scaling would multiply
        # its loss and gradients by the number of processes; DDP's mean over equal per-rank batches is
        # already the global batch mean. (One process: the same either way.)
        average_tokens_across_devices=token_loss,
        label_names=["labels"],  # every family's collator names the targets `labels`
        report_to=["wandb"] if wandb else [],
        run_name=run_name,
        torch_compile=trainer.torch_compile,
        # recompute each layer's activations in the backward (7B models); non-reentrant works with frozen
        # embeddings and with Quantum-PEFT's factors, computed once per pass before any layer runs
        gradient_checkpointing=trainer.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # a progress bar on a terminal; in a log file (nohup, SLURM) one line per logging step (LogLines)
        disable_tqdm=not sys.stderr.isatty(),
    )


def use_param_groups(trainer: Trainer, groups: list[dict] | None) -> None:
    """Give the Trainer its optimiser (class and settings from its arguments) over a method's own parameter
    groups (each may carry its lr / weight_decay); the scheduler, built later by trainer.train, scales every
    group's lr alike. None: the Trainer's default groups."""
    if groups is None:
        return
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    trainer.optimizer = optimizer_cls(groups, **kwargs)
