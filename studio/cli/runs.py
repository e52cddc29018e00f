"""``python -m studio runs``: list, show, cancel and rerun the long stages."""
from __future__ import annotations

import argparse
import json

from ..codes import RUN_STATUSES
from .common import author, open_workspace, print_result


def cmd_runs(args) -> int:
    from ..runs import jobs as runs

    ws = open_workspace(args)
    runs.reap(ws)
    if args.action == "list":
        rows = [runs.describe(r) for r in ws.store.runs(kind=args.kind, status=args.status, limit=args.limit)]
        print_result(rows, args.json, "\n".join(
            f"{r['id']:>5}  {r['kind']:<8} {r['status']:<9} {r['progress']:<16} {r['author']:<12} {r['started']}"
            for r in rows) or "No runs yet.")
        return 0
    if args.id is None:
        raise ValueError(f"runs {args.action} needs a run id")
    r = ws.store.run(args.id)
    if r is None:
        raise ValueError(f"no run {args.id}")
    if args.action == "show":
        info = {**runs.describe(r), "settings": r["settings"], "inputs": r["inputs"], "log": r["log_path"]}
        print_result(info, args.json, json.dumps(info, indent=2, default=str) + "\n\n" + runs.log_tail(ws, args.id))
        return 0
    if args.action == "cancel":
        ok = runs.cancel(ws, args.id)
        print(f"run {args.id}: " + ("asked to stop at its next item" if ok else f"already {r['status']}"))
        return 0 if ok else 1
    new = runs.rerun(ws, args.id, author(args))
    print(f"run {new} started (resumes run {args.id}); follow it with `python -m studio runs show {new}`")
    return 0


def cmd_worker(args) -> int:
    """The only way a run's worker starts: the settings and the author come from the run's row."""
    from ..runs import jobs as runs
    from .common import progress, report_run

    run_id, result = runs.work(open_workspace(args), args.run, track=progress())
    return report_run(run_id, result, args.json)


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("runs", parents=[common], help="long stages: list, show (with log), cancel, rerun (resume)")
    p.add_argument("action", choices=["list", "show", "cancel", "rerun"], help="what to do")
    p.add_argument("id", type=int, nargs="?", help="run id (show, cancel, rerun)")
    p.add_argument("--kind", default=None, help="only runs of this kind (list)")
    p.add_argument("--status", default=None, choices=list(RUN_STATUSES))
    p.add_argument("--limit", type=int, default=50, help="rows to list")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("worker", parents=[common], help="run a queued run recorded by the app (what the app starts)")
    p.add_argument("run", type=int, help="run id")
    p.set_defaults(func=cmd_worker)
