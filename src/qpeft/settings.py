"""Typed settings: build a dataclass from a plain mapping, refusing unknown keys and wrong types.

The config groups (`adapter.*`, `trainer.*`) are plain mappings once Hydra has composed them; a dataclass
says what each key may hold. `build_dataclass` checks every value against the field's annotation, naming
`<prefix>.<field>` in the error, and then runs the dataclass's own `__post_init__` (ranges, choices), so a
wrong setting stops the run when the config is composed, before any model or data is loaded.

Supported annotations: `int`, `float` (an int is accepted and converted), `str`, `bool`, `None`,
`Literal[...]`, `list[X]`, and unions of these (`int | None`, `int | Literal["full"]`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union

from qpeft.errors import QpeftError

T = TypeVar("T")


def describe(annotation: Any) -> str:
    """A short human name for an annotation: 'int or "full"', 'list of str', 'float or null'."""
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " or ".join(repr(v) for v in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return f"list of {describe(item)}"
    return getattr(annotation, "__name__", str(annotation))


def _convert(value: Any, annotation: Any) -> tuple[bool, Any]:
    """(fits, value converted to the annotation's type); bool never passes for int or float."""
    if annotation is Any:
        return True, value
    if annotation is type(None):
        return value is None, value
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(annotation):
            fits, converted = _convert(value, option)
            if fits:
                return True, converted
        return False, value
    if origin is Literal:
        # exact type as well as value: Literal[1] does not take True, Literal["1"] not 1
        return any(type(value) is type(v) and value == v for v in typing.get_args(annotation)), value
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        if not isinstance(value, (list, tuple)):
            return False, value
        out = []
        for element in value:
            fits, converted = _convert(element, item)
            if not fits:
                return False, value
            out.append(converted)
        return True, out
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if annotation is str:
        return isinstance(value, str), value
    raise TypeError(f"qpeft.settings cannot check the annotation {annotation!r}")


def check_value(value: Any, annotation: Any, key: str) -> Any:
    """`value` converted to `annotation`, or a QpeftError naming `key` and what it may hold."""
    fits, converted = _convert(value, annotation)
    if not fits:
        raise QpeftError(f"{key}={value!r} is not a valid value: it must be {describe(annotation)}")
    return converted


def build_dataclass(cls: type[T], values: Mapping[str, Any], prefix: str) -> T:
    """An instance of the dataclass `cls` from `values`, every key checked (see the module docstring).

    Unknown keys and missing required fields raise QpeftError naming `<prefix>.<key>`; so do values of the
    wrong type. The dataclass's `__post_init__` then checks ranges and choices.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise QpeftError(
            f"unknown option {prefix}.{unknown[0]}: valid options are {', '.join(sorted(fields))}"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise QpeftError(f"{prefix}.{missing[0]} is not set: give it a value ({prefix}.{missing[0]}=...)")
    hints = typing.get_type_hints(cls)
    kwargs = {name: check_value(value, hints[name], f"{prefix}.{name}") for name, value in values.items()}
    return cls(**kwargs)


def help_text(cls: type) -> dict[str, str]:
    """Field name -> its `help` metadata (what the option means), for listings and docs."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
