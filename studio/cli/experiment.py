"""``python -m studio experiment run|status FILE``: the whole chain from one experiment file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import author, open_workspace, print_result, progress


def cmd_experiment(args) -> int:
    from ..runs import experiment

    ws = open_workspace(args)
    if args.action == "status":
        rows = experiment.status(ws, args.file)
        print_result(rows, args.json, "\n".join(f"{r['step']:<32} {r['state']:<10} run {r['run'] or '-'}" for r in rows))
        return 0
    result = experiment.run(ws, args.file, author(args), track=progress(),
                            say=lambda line: print(line, file=sys.stderr))
    print_result(result, args.json)
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("experiment", parents=[common],
                       help="run an experiment file: split, pairs, training, test sets, evaluation, study (each a run; "
                            "a rerun skips what is done)")
    p.add_argument("action", choices=["run", "status"])
    p.add_argument("file", type=Path, help="the experiment (YAML); experiments/crossfaceid-paper.yaml lays out the paper's")
    p.set_defaults(func=cmd_experiment)
