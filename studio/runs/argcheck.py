"""Arguments bound for a worker, checked by the worker's own parser before it starts.

A stage's worker (``python -m studio <kind>``) and the training script take options the studio
sets itself (the workspace, the run id, the author, the output folder, ...). Whatever comes from a
form or the API is parsed here with the same parser the worker uses, so an option is recognised in
every spelling argparse accepts (``--opt value``, ``--opt=value``, an abbreviation) and refused
when it is one of the studio's own.
"""
from __future__ import annotations

import argparse


def check_list(args, what: str) -> list[str]:
    """Only a list of strings (one option or value each): a string is not split into characters."""
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"{what} must be a list of strings (one option or value each), got {type(args).__name__}")
    if any("\0" in a for a in args):
        raise ValueError(f"{what}: an argument contains a NUL byte")
    return args


def parse(parser: argparse.ArgumentParser, args: list[str], what: str) -> argparse.Namespace:
    """``parser.parse_args(args)`` that raises ValueError (naming ``what``) instead of exiting."""
    def refuse(message=None, *_):
        raise ValueError(f"{what}: {message or 'not accepted'}".strip())

    parser.error = refuse  # type: ignore[method-assign]
    parser.print_help = lambda *_: None  # type: ignore[method-assign]  # -h: refused below, nothing printed
    parser.exit = lambda status=0, message=None: refuse(message or "--help is not an argument for a run")  # type: ignore[method-assign]
    return parser.parse_args(check_list(args, what))


def given(parser: argparse.ArgumentParser, args: list[str], what: str) -> set[str]:
    """The options ``args`` set explicitly (their destinations), however they were spelled."""
    for action in parser._actions:  # a fresh parser: nothing defaults, nothing is required
        action.default = argparse.SUPPRESS
        action.required = False
    return set(vars(parse(parser, args, what)))


def refuse_reserved(parser: argparse.ArgumentParser, args: list[str], reserved: dict[str, str], what: str) -> None:
    """ValueError when ``args`` set any option of ``reserved`` (destination -> its flag)."""
    taken = sorted(reserved[d] for d in given(parser, args, what) if d in reserved)
    if taken:
        raise ValueError(f"{what}: {', '.join(taken)} {'is' if len(taken) == 1 else 'are'} set by the studio; "
                         "leave it out")
