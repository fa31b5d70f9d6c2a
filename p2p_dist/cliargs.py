"""argparse helpers shared by the console commands: numbers checked at parse time, and option
dataclasses built from the parsed arguments."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def options_from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """An options dataclass from parsed arguments: each field takes the argument of the same name
    (argparse turns --batch-size into batch_size), or a value in `given`. A field that neither
    supplies is a programming error (the parser and the dataclass drifted apart): TypeError."""
    parsed = vars(args)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in given:
            values[f.name] = given[f.name]
        elif f.name in parsed:
            values[f.name] = parsed[f.name]
        else:
            raise TypeError(f"{cls.__name__}.{f.name} has no command-line argument of that name")
    return cls(**values)


def _number(text: str, kind: type, name: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value
