"""Text generation and the E2E NLG metrics (BLEU, NIST, METEOR, ROUGE-L, CIDEr), as the LoRA paper ran them.

Decoding follows LoRA's `examples/NLG/src/gpt2_beam.py` (beam 10, length penalty 0.8, no-repeat 4-grams
among the generated tokens, stop at <|endoftext|> or "\\n\\n"). Scores follow the E2E challenge's official
script, `tuetschek/e2e-metrics` `measure_scores.py -p` (the command of LoRA's README): BLEU and NIST as its
Python MT-Eval re-implemented (its mteval-v13a tokenisation and counting, also for empty and very short
outputs; lowercased, n-grams clipped against all references of an MR),
METEOR, ROUGE-L and CIDEr(-D) through pycocoevalcap after the Stanford PTB tokeniser. docs/e2e.md says
where each number comes from and how far it can be from the official script's.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")


# ---------------------------------------------------------------- decoding


class NoRepeatGeneratedNGram(LogitsProcessor):
    """Ban a token that would repeat an n-gram of the generated continuation.

    transformers' `no_repeat_ngram_size` also counts n-grams of the prompt; LoRA's beam search (fairseq's
    rule) looks at the generated tokens only. The difference matters on E2E: the MR names the venue, and
    a 4-token name ("Crowne Plaza Hotel") could not be copied into the sentence.
    """

    def __init__(self, n: int, prompt_length: int):
        self.n, self.prompt_length = n, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :].tolist()
        for row, tokens in enumerate(generated):
            if len(tokens) + 1 < self.n:
                continue
            prefix = tuple(tokens[len(tokens) - self.n + 1 :])
            banned = {
                tokens[i + self.n - 1]
                for i in range(len(tokens) - self.n + 1)
                if tuple(tokens[i : i + self.n - 1]) == prefix
            }
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores


def stop_token_ids(tokenizer) -> list[int]:
    """LoRA's stop tokens: <|endoftext|> and, where the vocabulary has it as one token, "\\n\\n" (GPT-2: 628)."""
    ids = [tokenizer.eos_token_id]
    blank = tokenizer.encode("\n\n", add_special_tokens=False)
    if len(blank) == 1 and blank[0] != tokenizer.unk_token_id and blank[0] not in ids:
        ids.append(blank[0])
    return ids


def clean_output(text: str, eos_token: str) -> str:
    """LoRA's gpt2_decode.py: the text before the first <|endoftext|> or blank line, stripped."""
    return text.split(eos_token)[0].split("\n\n")[0].strip()


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    num_beams: int = 10,
    length_penalty: float = 0.8,
    no_repeat_ngram_size: int = 4,
    max_new_tokens: int = 64,
    batch_size: int = 8,
) -> list[str]:
    """One beam-searched continuation per prompt (token ids, as `data.e2e.prompt_ids` builds them), cut at
    the first stop token and stripped as LoRA's gpt2_decode.py does."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start : start + batch_size]]
        width = max(len(p) for p in chunk)
        # left padding: every prompt ends at the same position, where generation starts
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        processors = LogitsProcessorList()
        if no_repeat_ngram_size > 0:
            processors.append(NoRepeatGeneratedNGram(no_repeat_ngram_size, width))
        ids = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            num_beams=num_beams,
            length_penalty=length_penalty,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=pad,
            logits_processor=processors,
            do_sample=False,
            num_return_sequences=1,
        )
        texts = tokenizer.batch_decode(ids[:, width:], skip_special_tokens=False)
        outputs += [clean_output(t, tokenizer.eos_token) for t in texts]
    return outputs


# ---------------------------------------------------------------- BLEU and NIST (MT-Eval)


def mteval_tokens(text: str) -> list[str]:
    """e2e-metrics' MT-Eval tokenisation (`metrics/pymteval.py`, `NGramScore.tokenize`: mteval-v13a's rules),
    lowercased as its n-grams are. An empty line is one empty token, as the script counts it."""
    text = re.sub(r"<skipped>", "", text)
    text = re.sub(r"-\n", "", text)
    text = re.sub(r"\n", " ", text)
    for sgml, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(sgml, char)
    text = f" {text} "
    text = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", text)  # punctuation
    text = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", text)  # period and comma unless preceded by a digit
    text = re.sub(r"([\.,])([^0-9])", r" \1 \2", text)  # ... unless followed by a digit
    text = re.sub(r"([0-9])(-)", r"\1 \2 ", text)  # dash after a digit
    text = re.sub(r"\s+", " ", text).strip()
    return [token.lower() for token in text.split(" ")]


def _clipped(hyp: list[str], refs: list[list[str]], n: int) -> dict[tuple, int]:
    """The hypothesis' n-grams (first occurrence order) with counts clipped at their maximum in one reference."""
    merged: Counter = Counter()
    for r in refs:
        merged |= Counter(_ngrams(r, n))
    return {g: min(c, merged[g]) for g, c in Counter(_ngrams(hyp, n)).items() if merged[g]}


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU-4 in [0, 1] as e2e-metrics' `measure_scores.py -p` computes it (pymteval `BLEUScore`):
    clipped n-gram hits against all references of an MR, the closest reference length (the shorter on a tie),
    no smoothing. Like the script: an output of k < n tokens adds k - n + 1 (negative) to the n-gram total,
    an empty output counts as one token, and a zero hit count (total) is raised to 1e-15 (1e-9)."""
    hits, totals, ref_len = [0] * max_n, [0] * max_n, 0
    for h, rs in zip(hypotheses, references):
        hyp, refs = mteval_tokens(h), [mteval_tokens(r) for r in rs]
        for n in range(1, max_n + 1):
            hits[n - 1] += sum(_clipped(hyp, refs, n).values())
            totals[n - 1] += len(hyp) - n + 1
        ref_len += len(min(refs, key=lambda r: (abs(len(r) - len(hyp)), len(r))))
    penalty = 1.0
    if totals[0] <= ref_len:
        penalty = math.exp(1.0 - ref_len / (float(totals[0]) if totals[0] else 1e-5))
    log_sum = 0.0
    for n_hits, n_total in zip(hits, totals):
        log_sum += math.log(max(n_hits + 0.0, 1e-15) / max(n_total + 0.0, 1e-9))
    return penalty * math.exp((1.0 / max_n) * log_sum)


def nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 5) -> float:
    """Corpus NIST-5 as e2e-metrics' `measure_scores.py -p` computes it (pymteval `NISTScore`).

    NLTK's `corpus_nist` differs: it scores each segment against its single best reference, while MT-Eval
    clips each n-gram's count against its maximum over all references of the segment. Information weights
    come from all reference n-grams; the length penalty uses the mean reference length of each segment.
    Short outputs count as in `bleu` (k - n + 1 per n-gram order, an empty output one token); where the
    script divides by a zero n-gram total (every output shorter than n - 1 tokens) and fails, that order
    adds 0 here.
    """
    hyps = [mteval_tokens(h) for h in hypotheses]
    refs = [[mteval_tokens(r) for r in rs] for rs in references]
    ref_counts: list[Counter] = [Counter() for _ in range(max_n + 1)]  # index 0: the empty n-gram
    mean_ref = 0.0
    for rs in refs:
        for r in rs:
            for n in range(1, max_n + 1):
                ref_counts[n].update(_ngrams(r, n))
        ref_counts[0][()] += sum(len(r) for r in rs)
        mean_ref += sum(len(r) for r in rs) / float(len(rs))

    def info(gram: tuple) -> float:
        count = ref_counts[len(gram)].get(gram)
        return math.log(ref_counts[len(gram) - 1][gram[:-1]] / float(count), 2) if count else 0.0

    total = 0.0
    for n in range(1, max_n + 1):
        hit_info, sys_len = 0.0, 0
        for h, rs in zip(hyps, refs):
            sys_len += len(h) - n + 1
            hit_info += sum(info(g) * c for g, c in _clipped(h, rs, n).items())
        total += hit_info / sys_len if sys_len else 0.0
    ratio = sum(len(h) for h in hyps) / float(mean_ref)
    beta = -math.log(0.5) / math.log(1.5) ** 2
    penalty = 1.0 if ratio >= 1 else 0.0 if ratio <= 0 else math.exp(-beta * math.log(ratio) ** 2)
    return penalty * total


def _ngrams(tokens: list[str], n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# ---------------------------------------------------------------- METEOR, ROUGE-L, CIDEr (MS-COCO)


def java_available() -> bool:
    """pycocoevalcap's PTB tokeniser and METEOR are Java programs."""
    return shutil.which("java") is not None


def coco_metrics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float | None]:
    """METEOR, ROUGE-L and CIDEr as e2e-metrics' COCOEvalCap computes them: PTB-tokenised, lowercased,
    punctuation dropped. Without Java (or pycocoevalcap) all three are None, never estimated."""
    try:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        return {"meteor": None, "rouge_l": None, "cider": None}
    if not java_available():
        return {"meteor": None, "rouge_l": None, "cider": None}
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": h}] for i, h in enumerate(hypotheses)})
    meteor = Meteor()
    try:
        meteor_score, _ = meteor.compute_score(gts, res)
    finally:
        meteor.meteor_p.kill()  # its Java process otherwise lives until garbage collection
        meteor.meteor_p.wait()
    return {
        "meteor": float(meteor_score),
        "rouge_l": float(Rouge().compute_score(gts, res)[0]),
        "cider": float(Cider().compute_score(gts, res)[0]),
    }


def score(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float | None]:
    """The five E2E metrics of one output per MR against all of that MR's references, in the official
    script's units (fractions for BLEU, METEOR, ROUGE-L; NIST and CIDEr raw). A metric that cannot be
    computed here (no Java) is None."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError(f"{len(hypotheses)} outputs for {len(references)} reference groups")
    if any(not refs for refs in references):
        raise ValueError("every MR needs at least one reference")
    return {"bleu": bleu(hypotheses, references), "nist": nist(hypotheses, references)} | coco_metrics(
        hypotheses, references
    )


# ---------------------------------------------------------------- a run's evaluation

DECODING_KEYS = ("num_beams", "length_penalty", "no_repeat_ngram_size", "max_new_tokens")


def evaluate(
    model: torch.nn.Module,
    tokenizer,
    splits: dict,
    decoding: dict,
    out_dir: Path | None = None,
    batch_size: int = 8,
) -> dict[str, float | None]:
    """Decode every split's distinct MRs (`data.e2e.EvalSplit`) and score them; with `out_dir`, write the
    outputs and grouped references as the official script reads them (`measure_scores.py -p refs outs`).
    One split gives keys bleu, nist, ...; several give bleu_<split>, ... A metric that needs Java is left
    out when Java is missing (the run's record lists it under metrics_unavailable)."""
    settings = {k: decoding[k] for k in DECODING_KEYS if decoding.get(k) is not None}
    out: dict[str, float | None] = {}
    for split, data in splits.items():
        outputs = generate(model, tokenizer, data.prompts, batch_size=batch_size, **settings)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"e2e_{split}_outputs.txt").write_text("".join(o + "\n" for o in outputs))
            (out_dir / f"e2e_{split}_refs.txt").write_text(
                "\n".join("".join(r + "\n" for r in refs) for refs in data.references)
            )
        scores = score(outputs, data.references)
        missing = [name for name, value in scores.items() if value is None]
        if missing:
            print(
                f"[qpeft] {', '.join(missing)} not computed: pycocoevalcap needs Java (apt-get install "
                "default-jre-headless)",
                flush=True,
            )
        for name, value in scores.items():
            if value is not None:
                out[name if len(splits) == 1 else f"{name}_{split}"] = value
    return out
