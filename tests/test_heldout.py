"""The held-out slice leaks nothing: no trained example shares text with a held-out one (one contains the other,
word for word), checked against a brute-force reference and on the real GLUE files."""

import random

import pytest
from conftest import compose_cfg

from qpeft.data import glue


def brute_force(train: list[tuple[str, ...]], heldout: list[tuple[str, ...]]) -> list[int]:
    """Every pair of texts compared directly, at word boundaries (the reference `clashing` must equal)."""

    def norm(t: str) -> str:
        return " " + " ".join(t.lower().split()) + " "

    held = [norm(t) for texts in heldout for t in texts if t.strip()]
    return [
        i
        for i, texts in enumerate(train)
        if any(t.strip() and (norm(t) in h or h in norm(t)) for t in texts for h in held)
    ]


def test_clashing_on_hand_cases():
    train = [
        ("a gripping , beautiful film",),  # contains the held-out "beautiful film"
        ("beautiful",),  # inside the held-out "beautiful film"
        ("a beautifully shot film",),  # "beautiful" only as part of a word: no clash
        ("Beautiful   FILM",),  # the same text, case and spacing aside
        ("dull",),
        ("the cat sat", "on the mat"),  # a pair: its second sentence is a held-out one
    ]
    heldout = [("beautiful film",), ("on the mat",)]
    assert glue.clashing(train, heldout) == [0, 1, 3, 5]


def test_clashing_equals_brute_force_on_random_phrases():
    rng = random.Random(0)
    words = "the a film good bad not very dull , . fun plot".split()

    def phrase() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))

    for _ in range(20):
        train = [(phrase(),) if rng.random() < 0.5 else (phrase(), phrase()) for _ in range(60)]
        heldout = [(phrase(),) for _ in range(8)]
        assert glue.clashing(train, heldout) == brute_force(train, heldout)


class CharTokenizer:
    """Text as its code points, 0 between a pair's two texts: decodes back to the exact texts trained on."""

    def __call__(self, a: list[str], b: list[str] | None = None, **_) -> dict:
        pairs = zip(a, b) if b is not None else ((t,) for t in a)
        return {
            "input_ids": [
                [c for i, t in enumerate(p) for c in [0] * (i > 0) + [ord(x) for x in t]] for p in pairs
            ]
        }

    @staticmethod
    def decode(ids: list[int]) -> tuple[str, ...]:
        return tuple("".join(map(chr, ids)).split("\0"))


@pytest.mark.parametrize("task", ["sst2", "stsb", "rte"])
def test_no_trained_example_shares_text_with_a_heldout_one(glue_dir, task):
    """The claim study's split of SST-2 (phrases cut from the same parse trees), STS-B and RTE (sentences that recur
    across pairs): the trained examples and the held-out slice share no text; the dropped examples are counted.
    The split without cleaning (the frontier study's) shares some."""
    tok = CharTokenizer()
    cfg = compose_cfg([f"task=glue/{task}"]).task
    limit = 2000 if task != "rte" else 1500
    train, evals, facts = glue.load(cfg, tok, None, str(glue_dir), seed=0, train_limit=limit, heldout=500)
    leaky, _, leaky_facts = glue.load(
        cfg, tok, None, str(glue_dir), seed=0, train_limit=limit, heldout=500, heldout_clean=False
    )
    held = [tok.decode(ids) for ids in evals["heldout"]["input_ids"]]
    assert len(held) == 500 and len(train) == limit
    assert brute_force([tok.decode(ids) for ids in train["input_ids"]], held) == []
    assert brute_force([tok.decode(ids) for ids in leaky["input_ids"]], held)  # the old split leaked
    assert facts["train_clashes_dropped"] > 0 and leaky_facts["train_clashes_dropped"] == 0
    assert facts["train_pool"] == leaky_facts["train_pool"] - facts["train_clashes_dropped"]
    assert sum(facts.get("heldout_label_counts", {"": 500}).values()) == 500
