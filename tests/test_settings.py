"""qpeft.settings.build_dataclass: types from the annotations, unknown and missing keys, then __post_init__."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from qpeft.errors import QpeftError
from qpeft.settings import build_dataclass, describe, help_text


@dataclass
class Example:
    count: int
    rate: float = 0.5
    label: str = "x"
    flag: bool = False
    limit: int | None = None
    mode: Literal["a", "b"] = "a"
    names: list[str] = field(default_factory=list)
    rank: int | Literal["full"] = 8
    step: int | float | None = None
    note: str = field(default="", metadata={"help": "a free note"})

    def __post_init__(self):
        if self.count < 0:
            raise QpeftError(f"example.count={self.count} must be >= 0")


def build(**values):
    return build_dataclass(Example, values, "example")


def test_valid_values_pass_and_int_becomes_float_for_float_fields():
    e = build(
        count=3, rate=1, label="y", flag=True, limit=None, mode="b", names=["q", "v"], rank="full", step=200
    )
    assert e == Example(3, 1.0, "y", True, None, "b", ["q", "v"], "full", 200)
    assert type(e.rate) is float and type(e.step) is int  # int | float keeps an int an int
    assert build(count=1, step=0.1).step == 0.1 and build(count=1, rank=4).rank == 4
    assert build(count=1, names=("a",)).names == ["a"]  # a tuple (or an OmegaConf list as a list) is a list


@pytest.mark.parametrize(
    "values,key",
    [
        ({"count": "3"}, "example.count"),  # no string to number coercion
        ({"count": 2.0}, "example.count"),  # a float is not an int
        ({"count": True}, "example.count"),  # nor is a bool
        ({"count": 1, "rate": "fast"}, "example.rate"),
        ({"count": 1, "rate": False}, "example.rate"),
        ({"count": 1, "label": 3}, "example.label"),
        ({"count": 1, "flag": "yes"}, "example.flag"),
        ({"count": 1, "flag": 1}, "example.flag"),
        ({"count": 1, "limit": "none"}, "example.limit"),
        ({"count": 1, "mode": "c"}, "example.mode"),
        ({"count": 1, "names": "q"}, "example.names"),  # a string is not a list of strings
        ({"count": 1, "names": ["q", 1]}, "example.names"),
        ({"count": 1, "rank": "half"}, "example.rank"),
        ({"count": 1, "rank": None}, "example.rank"),
        ({"count": 1, "step": "soon"}, "example.step"),
    ],
)
def test_wrong_types_name_the_setting(values, key):
    with pytest.raises(QpeftError, match=rf"^{key}=") as info:
        build(**values)
    assert "\n" not in str(info.value)


def test_unknown_and_missing_keys_and_post_init():
    with pytest.raises(QpeftError, match=r"unknown option example\.colour: valid options are count, flag,"):
        build(count=1, colour="red")
    with pytest.raises(QpeftError, match=r"example\.count is not set"):
        build(rate=0.1)
    with pytest.raises(QpeftError, match=r"example\.count=-1 must be >= 0"):
        build(count=-1)  # the dataclass's own range check runs after the type checks


def test_describe_and_help_text():
    assert describe(int | Literal["full"]) == "int or 'full'"
    assert describe(list[str]) == "list of str" and describe(float | None) == "float or null"
    assert help_text(Example)["note"] == "a free note" and help_text(Example)["count"] == ""
