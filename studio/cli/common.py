"""What every command of ``python -m studio`` shares: the common options, the workspace, a stage run
with its progress, and printing the result."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import default_workspace


def progress():
    """A tqdm bar for a stage's items (in a worker's log it shows how far the run is)."""
    from tqdm.auto import tqdm

    return lambda it, **kw: tqdm(it, **kw)


def print_result(data, as_json: bool, text: str | None = None) -> None:
    """``text`` for a person (JSON when there is none), JSON with ``--json``."""
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        print(text if text is not None else json.dumps(data, indent=2, ensure_ascii=False, default=str))


def open_workspace(args):
    from ..workspace import Workspace

    return Workspace.open(args.workspace)


def author(args) -> str:
    import getpass

    if args.author:
        return args.author
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def run_stage(args, ws, settings):
    """Run a stage in this process as a recorded run, with a tqdm bar; returns (run id, result), None when cancelled."""
    from ..runs.jobs import start

    return start(ws, settings, author(args), track=progress())


def report_run(run_id: int, result, as_json: bool) -> int:
    """Print a stage run's result (its warning, if any, on stderr); the exit code (130 when it was cancelled).

    The CLI and the worker both end here, so a warning reaches a person and a worker's log alike."""
    if result is None:
        print(f"run {run_id} cancelled; run the same command again to resume", file=sys.stderr)
        return 130
    if isinstance(result, dict) and result.get("warning"):
        print(f"warning: {result['warning']}", file=sys.stderr)
    print_result({**result, "run_id": run_id} if isinstance(result, dict) else result, as_json)
    return 0


def common_options() -> argparse.ArgumentParser:
    """The options every stage takes (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", type=Path, default=default_workspace(),
                        help="workspace directory (default: $STUDIO_WORKSPACE or ./workspaces/demo)")
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    common.add_argument("--author", default=None, help="name recorded with what this command writes (default: $USER)")
    return common
