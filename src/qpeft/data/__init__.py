"""Datasets: GLUE (text) and VTAB-1k / CIFAR-10 (images)."""

from qpeft.errors import QpeftError


def check_train_limit(limit: int | None, n: int, task: str, which: str = "") -> None:
    """trainer.train_limit keeps `limit` of the `n` training examples: more than there are is a mistake."""
    if limit and limit > n:
        raise QpeftError(
            f"trainer.train_limit={limit} is above the {n:,} training examples of {task}{which}: lower it, or "
            "set trainer.train_limit=null to train on all of them"
        )
