"""Runs tab (admin): start a long stage as a worker, follow its progress and log, cancel it, rerun it.

A run started here is recorded with its settings (typed as `python -m studio <stage>` arguments,
built into the stage's settings object) and runs as `python -m studio worker RUN_ID` in its own
process: closing the page (or the app) does not stop it, and reopening the page shows it again. The list and the open run
refresh on a timer.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ..runs import jobs as runs
from ..store import RUN_STATUSES
from ..validate import parse_id
from .access import StudioContext, username
from .pages import PageMemory, Refresh, shown_time
from . import run_panel
from .run_panel import RunPanel
from .wiring import Wiring

COLUMNS = ["id", "kind", "status", "progress", "author", "started (UTC)", "ended (UTC)", "exit_code"]
EXPERIMENT_COLUMNS = ["experiment", "step", "kind", "state", "run", "after"]


@dataclass
class RunsTab:
    tab: gr.Tab
    kind: gr.Dropdown
    args: gr.Textbox
    start: gr.Button
    kind_filter: gr.Dropdown
    status_filter: gr.Dropdown
    table: gr.Dataframe
    run_id: gr.Number
    summary: gr.Markdown
    log: gr.Textbox
    cancel: gr.Button
    rerun: gr.Button
    experiments: gr.Dataframe


def build() -> RunsTab:
    with gr.Tab("Runs", id="runs", visible=False) as tab:
        with gr.Row():
            kind = gr.Dropdown(list(runs.KINDS), value="analyze", label="Stage")
            args = gr.Textbox(label="Settings as `python -m studio <stage>` arguments (the studio adds the workspace and you as author)",
                              placeholder="e.g. --face-pack bundled   ·   ingest: /data/photos   ·   export: --out exports/a",
                              scale=3, elem_id="run-args")
            start = gr.Button("Start run", variant="primary")
        with gr.Row():
            kind_filter = gr.Dropdown(["any", *runs.KINDS, "generate"], value="any", label="Kind")
            status_filter = gr.Dropdown(["any", *RUN_STATUSES], value="any", label="Status")
        table = gr.Dataframe(headers=COLUMNS, label="Runs (newest first; click a row to open it)", interactive=False,
                             elem_id="runs-table")
        with gr.Row():
            run_id = gr.Number(label="Open run", value=None, precision=0, elem_id="run-id")
            cancel = gr.Button("Cancel run", variant="stop")
            rerun = gr.Button("Rerun (resume)")
        summary = gr.Markdown(elem_id="run-summary")
        log = gr.Textbox(label="Log (tail)", lines=14, max_lines=14, autoscroll=True, elem_id="run-log")
        experiments = gr.Dataframe(headers=EXPERIMENT_COLUMNS, interactive=False, elem_id="experiments",
                                   label="Experiments (`python -m studio experiment run FILE`): each step and its run")
    return RunsTab(tab, kind, args, start, kind_filter, status_filter, table, run_id, summary, log, cancel, rerun,
                   experiments)


def experiments_frame(ctx: StudioContext) -> pd.DataFrame:
    from ..runs.experiment import overview

    return pd.DataFrame([[r[c] for c in EXPERIMENT_COLUMNS] for r in overview(ctx.ws)], columns=EXPERIMENT_COLUMNS)


def runs_frame(ctx: StudioContext, kind=None, status=None) -> pd.DataFrame:
    runs.reap(ctx.ws)
    rows = [runs.describe(r) for r in ctx.ws.store.runs(kind=None if kind in (None, "any") else kind,
                                                         status=None if status in (None, "any") else status)]
    return pd.DataFrame([[r["id"], r["kind"], r["status"], r["progress"], r["author"], shown_time(r["started"]),
                          shown_time(r["ended"]), r["exit_code"]] for r in rows], columns=COLUMNS)


def run_view(ctx: StudioContext, run_id) -> tuple[str, str]:
    """(summary markdown, log tail) of one run."""
    if run_id in (None, "", 0):  # an empty number box reads as 0
        return "Open a run: click a row, or start one.", ""
    r = ctx.ws.store.run(parse_id(run_id, "run id"))
    if r is None:
        return f"No run {run_id}.", ""
    d = runs.describe(r)
    lines = [f"### Run {d['id']} · {d['kind']} · **{d['status']}**",
             f"Progress {d['progress']} · by {d['author']} · started {shown_time(d['started'])} UTC"
             + (f" · ended {shown_time(d['ended'])} (exit code {d['exit_code']})" if d["ended"] else ""),
             f"Worker: `{d['command']}`"]
    same = runs.equivalent_command(r)
    if same:
        lines.append(f"The same from a shell: `{same}`")
    if d["resumes"]:
        lines.append(f"Resumes run {d['resumes']}.")
    if d["error"]:
        lines.append(f"**Error:** {d['error']}")
    if d["result"] is not None:
        lines.append("**Result:** " + ", ".join(f"{k}: {v}" for k, v in d["result"].items()
                                                if not isinstance(v, (list, dict))))
    return "\n\n".join(lines), runs.log_tail(ctx.ws, r["id"])


def start_run(ctx: StudioContext, kind: str, arg_text: str, author: str, secrets_env: dict | None = None) -> int:
    """A run of ``kind`` whose settings are typed as `python -m studio <kind>` arguments (one shell-quoted
    line): built into the stage's settings object (runs.settings_from_args); the worker gets only the run id."""
    if not isinstance(arg_text, str):
        raise ValueError("arguments must be one line of text")
    try:
        args = shlex.split(arg_text or "")
    except ValueError as exc:
        raise ValueError(f"arguments: {exc}") from None
    return runs.submit_args(ctx.ws, kind, args, author, secrets_env=secrets_env)


def wire(ctx: StudioContext, t: RunsTab) -> Refresh:
    """Returns the tab's part of the page's refresh clock (re-sending only a table or log that changed)."""
    w = Wiring(ctx)

    def who(request) -> str:
        return username(ctx, request) or "local admin"

    def on_start(request: gr.Request, kind, args, kind_filter, status_filter):
        run_id = start_run(ctx, kind, args, who(request))
        return (runs_frame(ctx, kind_filter, status_filter), run_id, *run_view(ctx, run_id))

    w.on(t.start.click, on_start, [t.kind, t.args, t.kind_filter, t.status_filter],
         [t.table, t.run_id, t.summary, t.log])

    def on_refresh(request: gr.Request, kind_filter, status_filter, run_id):
        return (runs_frame(ctx, kind_filter, status_filter), *run_view(ctx, run_id))

    refresh_io = ([t.kind_filter, t.status_filter, t.run_id], [t.table, t.summary, t.log])
    w.on(t.tab.select, on_refresh, *refresh_io, quiet=True)

    def on_experiments(request: gr.Request):
        return experiments_frame(ctx)

    w.on(t.tab.select, on_experiments, None, [t.experiments], quiet=True)
    w.on(t.kind_filter.change, on_refresh, *refresh_io, quiet=True)
    w.on(t.status_filter.change, on_refresh, *refresh_io, quiet=True)
    w.on(t.run_id.submit, on_refresh, *refresh_io, quiet=True)

    run_panel.wire(w, ctx, RunPanel(t.run_id, t.cancel, t.table), lambda run_id: run_view(ctx, run_id),
                   [t.summary, t.log])

    def on_rerun(request: gr.Request, run_id):
        new = runs.rerun(ctx.ws, parse_id(run_id, "run id"), who(request))
        return (new, *run_view(ctx, new))

    w.on(t.rerun.click, on_rerun, [t.run_id], [t.run_id, t.summary, t.log])

    def runs_api(request: gr.Request, kind: str = "any", status: str = "any") -> list[dict]:
        """Runs, newest first, with status and progress."""
        runs.reap(ctx.ws)
        return [runs.describe(r) for r in ctx.ws.store.runs(kind=None if kind == "any" else kind,
                                                            status=None if status == "any" else status)]

    def run_api(request: gr.Request, run_id: int) -> dict:
        """One run with its settings and the tail of its log."""
        runs.reap(ctx.ws)
        r = ctx.ws.store.run(parse_id(run_id, "run id"))
        if r is None:
            raise ValueError(f"no run {run_id}")
        return {**runs.describe(r), "settings": r["settings"], "log": runs.log_tail(ctx.ws, r["id"])}

    def run_start_api(request: gr.Request, kind: str, args: str = "") -> int:
        """Start `python -m studio <kind> <args>` on this workspace as a worker; returns the run id."""
        return start_run(ctx, kind, args, who(request))

    def run_cancel_api(request: gr.Request, run_id: int) -> bool:
        """Ask a run to stop at its next item; false when it had already finished."""
        return runs.cancel(ctx.ws, parse_id(run_id, "run id"))

    def run_rerun_api(request: gr.Request, run_id: int) -> int:
        """Start a finished run again (finished items are skipped: it resumes); returns the new run id."""
        return runs.rerun(ctx.ws, parse_id(run_id, "run id"), who(request))

    def experiments_api(request: gr.Request) -> list[dict]:
        """Every experiment of this workspace, step by step: state (done, changed, to run, ...) and run id."""
        from ..runs.experiment import overview

        return overview(ctx.ws)

    w.api(experiments_api, "experiments")
    w.api(runs_api, "runs")
    w.api(run_api, "run")
    w.api(run_start_api, "run_start")
    w.api(run_cancel_api, "run_cancel")
    w.api(run_rerun_api, "run_rerun")
    return Refresh(PageMemory().only_changes("runs")(w.guard(on_refresh, refresh_io[1], quiet=True)), *refresh_io)
