"""``python -m studio <stage>``: every stage of the chain, scriptable, on one workspace.

One module per phase adds its sub-commands (``add_commands``); ``common`` holds what they share."""
from __future__ import annotations

import argparse
import logging
import sys

from . import captions, dataset, evaluate, experiment, generate, runs, study, train, users
from .common import common_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description="CrossFaceID Studio: build and curate FaceID datasets.")
    common = common_options()
    sub = parser.add_subparsers(dest="command", required=True)
    for phase in (dataset, captions, train, generate, evaluate, study, experiment, runs, users):  # the chain's order
        phase.add_commands(sub, common)
    parser.stage_parsers = sub.choices  # type: ignore[attr-defined]  # for stage_parser()
    return parser


def stage_parser(kind: str) -> argparse.ArgumentParser:
    """A fresh parser of one stage, exactly as ``python -m studio <kind>`` parses (checks a worker's arguments)."""
    parsers = build_parser().stage_parsers  # type: ignore[attr-defined]
    if kind not in parsers:
        raise ValueError(f"unknown stage {kind!r}")
    return parsers[kind]


def main(argv: list[str] | None = None) -> int:
    from ..dataset.faces import MissingModelError
    from ..models import MissingWeightsError
    from ..train.launch import TrainingError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (MissingModelError, MissingWeightsError, TrainingError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
