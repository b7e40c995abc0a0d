"""Checks shared by the configs and the CLIs: field types against annotations, YAML reading, argparse types.

    check_fields(self)   # first line of __post_init__: names the field and the value at fault

A value of the wrong type fails here, where the message can name it, instead of later as a
`TypeError` inside a comparison or as a silently odd run (`lr: "abc"`, `num_frames: 8.5`).
The CLIs turn these ValueErrors, raised before any work, into argparse errors (one line, exit 2).
"""
from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import re
import typing
from typing import Any, Union

import yaml

_NONE = type(None)
_SEQUENCES = (tuple, list, collections.abc.Sequence)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-3` as the float YAML 1.2 says it is (PyYAML, YAML 1.1,
    reads a float only with a dot, so `--set lr=1e-3` would arrive as the string '1e-3')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, with YAML 1.2 exponent floats (`1e-3`)."""
    return yaml.load(text, Loader=_Loader)


def read_yaml_mapping(text: str, source: str, what: str) -> dict:
    """The mapping of `what`'s fields that YAML `text` (read from `source`) must hold: an empty
    text, a list, a scalar or a syntax error is a ValueError naming the source."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{source}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of {what} fields, got {type(data).__name__} {data!r:.60}")
    return data


_NAMES = {bool: "bool", int: "int", float: "number", str: "string"}


def _describe(hint, article: bool = True) -> str:
    """"an int", "a tuple (int, int, int)", "a mapping of string to number", "an int or a string"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "anything"
    if origin is Union:
        return " or ".join("None" if a is _NONE else _describe(a, article) for a in args)
    if origin is dict:
        return f"{'a ' if article else ''}mapping of {_describe(args[0], False)} to {_describe(args[1], False)}"
    if origin in _SEQUENCES:
        kind = origin.__name__.lower()
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"{'a ' if article else ''}{kind} ({', '.join(_describe(a, False) for a in args)})"
        return f"{'a ' if article else ''}{kind} of {_describe(args[0], False)}" if args else kind
    name = _NAMES.get(hint, getattr(hint, "__name__", str(hint)))
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}" if article else name


def check_value(value: Any, hint: Any, where: str) -> Any:
    """`value` if it has the annotated type `hint`; lists become tuples for Tuple / Sequence fields
    and tuples become lists for List fields (YAML has lists only; safe_dump refuses tuples).

    int refuses bool, float and str; float accepts int (not bool); str accepts only str.
    Raises ValueError naming `where` (e.g. "TrainConfig.lr") and the value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Union:
        if value is None and _NONE in args:
            return None
        arms = [a for a in args if a is not _NONE]
        if len(arms) == 1 and typing.get_origin(arms[0]) is not None:  # Optional[Tuple...]: which item is wrong
            return check_value(value, arms[0], where)
        for arm in arms:
            try:
                return check_value(value, arm, where)
            except ValueError:
                continue
        raise ValueError(f"{where} must be {_describe(hint)}, got {value!r} ({type(value).__name__})")
    if origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be {_describe(hint)}, got {value!r} ({type(value).__name__})")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where} must have {len(args)} items, got {len(value)}: {value!r}")
            items = [check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            arm = args[0] if args else Any
            items = [check_value(v, arm, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r} ({type(value).__name__})")
        key_hint, value_hint = args or (Any, Any)
        return {check_value(k, key_hint, f"{where} key {k!r}"): check_value(v, value_hint, f"{where}[{k!r}]")
                for k, v in value.items()}
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(hint, lambda v: isinstance(v, hint))
    if not ok(value):
        raise ValueError(f"{where} must be {_describe(hint)}, got {value!r} ({type(value).__name__})")
    return value


def check_fields(obj: Any) -> None:
    """Check (and normalise, see `check_value`) every field of dataclass `obj` against its annotation."""
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        setattr(obj, f.name, check_value(getattr(obj, f.name), hints[f.name], f"{cls.__name__}.{f.name}"))


def count_type(minimum: int):
    """An argparse `type` for counts: an int >= `minimum`, else argparse's one-line error (exit 2)
    naming the argument and the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {value}")
        return value
    parse.__name__ = f"int >= {minimum}"  # argparse names the type in some messages
    return parse


def parse_overrides(parser: argparse.ArgumentParser, items, flag: str = "--set") -> dict:
    """`FIELD=VALUE` items (values in YAML syntax) as a dict; a malformed item is a parser error."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"{flag} expects FIELD=VALUE, got {item!r}")
        try:
            overrides[key] = load_yaml(value)
        except yaml.YAMLError as err:
            parser.error(f"{flag} {item}: the value is not valid YAML ({str(err).splitlines()[0]})")
    return overrides
