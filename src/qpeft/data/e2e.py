"""E2E NLG (restaurant MRs -> sentences) in the format of the LoRA paper's NLG code, for causal LMs.

Data: the LoRA repository's files (`examples/NLG/data/e2e/{train,valid,test}.txt`, one `MR||reference`
per line, MR as `name : X | Type : Y | ...`, both tokenised) or the Hub's `tuetschek/e2e_nlg`, converted
to that format (`to_lora_format`: the same text for all 137 references of e2e-metrics' example, checked in
tests/test_e2e.py). A training example is LoRA's: `MR <|endoftext|> ' ' reference <|endoftext|>`, the
loss on the reference and its closing token only. Evaluation decodes one output per distinct MR and
scores it against all of that MR's references (qpeft.nlg).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from datasets import Dataset

from qpeft.data import check_train_limit
from qpeft.errors import QpeftError

datasets.disable_progress_bars()

HUB_DATASET = "tuetschek/e2e_nlg"
HUB_REVISION = "refs/convert/parquet"  # the Hub's Parquet export: the repository itself is a loading script
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
# the Hub's attribute names -> the LoRA files' (eatType -> "Type" as in LoRA's data)
MR_KEYS = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}
IGNORE = -100


def lora_tokenize(text: str) -> str:
    """The tokenisation of the LoRA E2E files: punctuation split off, "isn't" -> "isn 't"."""
    text = re.sub(r"(\w)'(\w)", r"\1 '\2", text)
    return " ".join(re.sub(r"([^\w\s'])", r" \1 ", text).split())


def to_lora_format(mr: str, reference: str) -> tuple[str, str]:
    """A Hub pair (`name[X], eatType[Y]`, raw sentence) as a LoRA-file pair (`name : X | Type : Y`, tokens)."""
    slots = re.findall(r"\s*([^\[,]+)\[([^\]]*)\]", mr)
    if not slots:
        raise QpeftError(f"unreadable E2E meaning representation '{mr}'")
    mr_text = " | ".join(f"{MR_KEYS.get(k.strip(), k.strip())} : {lora_tokenize(v)}" for k, v in slots)
    return mr_text, lora_tokenize(reference) + " "  # the LoRA files end every reference with a space


def read_lora_file(path: Path) -> list[tuple[str, str]]:
    """(MR, reference) pairs of one LoRA-format file, references as written (the trailing space kept)."""
    if not path.exists():
        raise QpeftError(
            f"E2E file {path} not found: set task.data_dir to a folder with LoRA's e2e files "
            "(LoRA's examples/NLG/data/e2e) or null to read the Hub"
        )
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            mr, sep, ref = line.partition("||")
            if not sep:
                raise QpeftError(f"{path}, line {n}: expected 'MR||reference'")
            pairs.append((mr, ref))
    if not pairs:
        raise QpeftError(f"E2E file {path} holds no 'MR||reference' lines: restore it, or fix task.data_dir")
    return pairs


def read_hub(split: str) -> list[tuple[str, str]]:
    """One split ('train', 'valid', 'test') of the Hub's E2E NLG, in the LoRA files' format."""
    from datasets import load_dataset

    try:
        ds = load_dataset(HUB_DATASET, revision=HUB_REVISION, split=HUB_SPLITS[split])
    except Exception as e:  # ConnectionError, OfflineModeIsEnabled, ...
        raise QpeftError(
            f"could not download {HUB_DATASET} from the Hub ({type(e).__name__}): set task.data_dir to a "
            "folder with LoRA's e2e files (train.txt, valid.txt, test.txt)"
        ) from None
    return [to_lora_format(m, r) for m, r in zip(ds["meaning_representation"], ds["human_reference"])]


def read_split(task, split: str) -> list[tuple[str, str]]:
    """A split from task.data_dir (file task.files[split]) when that file exists there, else from the Hub."""
    data_dir = task.get("data_dir") or os.environ.get("QPEFT_E2E_DIR")
    if data_dir:
        path = Path(data_dir).expanduser() / task.files[split]
        if path.exists():
            return read_lora_file(path)
        if not task.get("hub_fallback", False):
            raise QpeftError(
                f"E2E {split} file {path} not found: point task.data_dir at LoRA's examples/NLG/data/e2e, set "
                f"task.hub_fallback=true to read that split from the Hub, or task.files.{split}=<file> "
                "(../shared/data/e2e has valid.txt and test.txt only)"
            )
    return read_hub(split)


def group_by_mr(pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
    """Distinct MRs in order of first appearance and all references of each (stripped), as LoRA's
    gpt2_decode.py groups them for scoring."""
    groups: dict[str, list[str]] = {}
    for mr, ref in pairs:
        groups.setdefault(mr, []).append(ref.strip())
    return list(groups), list(groups.values())


def prompt_ids(tokenizer, mr: str) -> list[int]:
    """LoRA's context: the MR's tokens and <|endoftext|> as separator."""
    return tokenizer.encode(mr, add_special_tokens=False) + [tokenizer.eos_token_id]


def encode_pair(tokenizer, mr: str, reference: str, max_length: int) -> dict[str, list[int]]:
    """input_ids of MR + separator + ' ' + reference + <|endoftext|>; labels -100 on the prompt."""
    prompt = prompt_ids(tokenizer, mr)
    target = tokenizer.encode(" " + reference, add_special_tokens=False) + [tokenizer.eos_token_id]
    ids = (prompt + target)[:max_length]
    labels = ([IGNORE] * len(prompt) + target)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def encode(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> Dataset:
    rows = [encode_pair(tokenizer, mr, ref, max_length) for mr, ref in pairs]
    return Dataset.from_dict({k: [r[k] for r in rows] for k in ("input_ids", "attention_mask", "labels")})


class CausalCollator:
    """Right padding: pad token in input_ids, 0 in attention_mask, -100 in labels."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([list(r[key]) + [value] * (width - len(r[key])) for r in rows])

        return {
            "input_ids": pad("input_ids", self.pad),
            "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", IGNORE),
        }


@dataclass
class EvalSplit:
    """An evaluation split: teacher-forced examples (loss during training) and, per distinct MR, the
    prompt to decode from and all references."""

    pairs: Dataset
    mrs: list[str]
    references: list[list[str]]
    prompts: list[list[int]]

    def __len__(self) -> int:
        return len(self.mrs)


def load(
    task, tokenizer, max_length: int, seed: int, train_limit: int | None = None, eval_limit: int | None = None
) -> tuple[Dataset, dict[str, EvalSplit]]:
    """(training examples, {eval split: EvalSplit}); train_limit keeps a seeded random subset of the training
    pairs, eval_limit the first MRs of each eval split (with all their references)."""
    train = encode(tokenizer, read_split(task, "train"), max_length)
    check_train_limit(train_limit, len(train), "E2E")
    if train_limit:
        train = train.shuffle(seed=seed).select(range(min(train_limit, len(train))))
    evals = {}
    for split in task.eval_splits:
        pairs = read_split(task, split)
        mrs, refs = group_by_mr(pairs)
        if eval_limit:
            mrs, refs = mrs[:eval_limit], refs[:eval_limit]
            kept = set(mrs)
            pairs = [p for p in pairs if p[0] in kept]
        evals[split] = EvalSplit(
            encode(tokenizer, pairs, max_length), mrs, refs, [prompt_ids(tokenizer, m) for m in mrs]
        )
    return train, evals


def word_tokenizer(texts: Sequence[str], vocab_size: int):
    """A word-level tokenizer built from `texts` (tests, and no GPT-2 vocabulary offline): whitespace
    tokens of the LoRA files, <|endoftext|> = 0 (eos, pad, separator), [UNK] = 1, at most vocab_size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "[UNK]"])
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="[UNK]"
    )
