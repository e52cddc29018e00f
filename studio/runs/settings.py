"""What a run is asked to do, as one typed object per run kind.

A run's settings are a dataclass deriving from :class:`RunSettings`: its fields, their types and
defaults are written once, there. The CLI builds one from its parsed arguments (``from_args``),
the app and the API from their fields (``from_dict``), the run row stores ``to_dict()``, and the
worker (``python -m studio worker RUN_ID``) builds it back from the row. ``from_dict`` is the one
gate: unknown fields, values of the wrong type and NUL bytes are refused naming the field, and
``validate`` then checks what the types cannot say.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

S = TypeVar("S", bound="RunSettings")


class RunSettings:
    """Base of every run kind's settings dataclass; ``KIND`` names the run kind it asks for."""

    KIND: ClassVar[str] = ""
    #: how messages name these settings ("training settings"); the kind when empty
    LABEL: ClassVar[str] = ""
    #: fields whose command-line option has another destination name (field -> dest)
    CLI_NAMES: ClassVar[dict[str, str]] = {}
    #: list fields written as one comma-separated option (others repeat their option per item)
    CLI_JOINED: ClassVar[frozenset[str]] = frozenset()

    def validate(self) -> None:
        """Refuse values the types allow but the stage does not (ValueError naming the field)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def run_inputs(self) -> dict:
        """What the run holds or reads beyond its settings, recorded with it (training: its GPU set)."""
        return {}

    @classmethod
    def from_dict(cls: type[S], data: Any) -> S:
        """Settings from named fields (a stored run, an API call): checked, defaults filled, validated."""
        what = f"{cls.LABEL or cls.KIND} settings"
        if not isinstance(data, Mapping):
            raise ValueError(f"{what} must be an object of named fields, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        unknown = sorted(str(k) for k in data if k not in fields)
        if unknown:
            raise ValueError(f"unknown {what}: {unknown}; known: {', '.join(fields)}")
        hints = typing.get_type_hints(cls)
        values = {k: coerce(v, hints[k], f"{what}: {k}") for k, v in data.items()}
        missing = [name for name, f in fields.items() if name not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{what}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
        settings = cls(**values)
        settings.validate()
        return settings

    @classmethod
    def from_args(cls: type[S], args: Any) -> S:
        """Settings from a stage's parsed command line: the options named as fields; unset ones keep the default."""
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            value = getattr(args, cls.CLI_NAMES.get(f.name, f.name), None)
            if f.init and value is not None:
                values[f.name] = value
        return cls.from_dict(values)

    def to_cli(self) -> list[str]:
        """The `python -m studio <kind>` arguments that ask for these settings (what a person would type to
        run the same again; runs are shown with it). Derived from the stage's own parser, not written out."""
        import argparse

        actions = _cli_actions(self.KIND)
        defaults = self.defaults()
        positional, out, rest = [], [], []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value, action = getattr(self, f.name), actions.get(self.CLI_NAMES.get(f.name, f.name))
            if action is None or (f.name in defaults and value == defaults[f.name]) or value is None:
                continue
            if not action.option_strings:
                if action.nargs == argparse.REMAINDER:
                    rest = ["--", *value] if value else []
                else:
                    positional.append(str(value))
                continue
            flag = action.option_strings[-1]
            if isinstance(action, argparse.BooleanOptionalAction):
                out.append(action.option_strings[0 if value else 1])  # --x / --no-x
            elif isinstance(value, bool):
                out += [flag] if value else []
            elif isinstance(value, list) and f.name in self.CLI_JOINED:
                out += [flag, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
            elif isinstance(value, list):
                out += [a for v in value for a in (flag, str(v))]
            else:
                out += [flag, repr(value) if isinstance(value, float) else str(value)]
        return positional + out + rest

    @classmethod
    def defaults(cls) -> dict:
        """The fields that have defaults, with them (a stage's parser takes them from here)."""
        out = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out


@functools.lru_cache(maxsize=None)
def _cli_actions(kind: str) -> dict:
    """dest -> option of a stage's command, only read by ``to_cli``: built once per kind (the Runs view shows
    the open run's command on every refresh)."""
    from ..cli import stage_parser

    return {a.dest: a for a in stage_parser(kind)._actions}


def coerce(value: Any, hint: Any, what: str) -> Any:
    """``value`` as type ``hint`` (str, int, float, bool, X | None, list[X]); ValueError naming ``what``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        kinds = [o for o in options if o is not type(None)]
        return coerce(value, kinds[0], what) if len(kinds) == 1 else value
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            kind = " of strings (one option or value each)" if item is str else ""
            raise ValueError(f"{what} must be a list{kind}, got {type(value).__name__}")
        return [coerce(v, item, f"{what}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{what} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # a number box sends 2.0
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{what} must be a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{what} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{what} must be text, got {type(value).__name__}")
        if "\0" in value:
            raise ValueError(f"{what} contains a NUL byte")
        return value
    return value
