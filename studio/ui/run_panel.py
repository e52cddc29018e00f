"""The run panel every tab that follows runs shares (Training, Evaluate, Runs): the open run, its
history, and cancelling it.

A tab builds its own layout and view of a run; the panel binds what is the same everywhere: a
click on a history row opens that run, and the cancel button asks the open run to stop at its next
item (a training run checkpoints first) and shows it again.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ..runs import jobs as runs
from ..validate import parse_id
from .access import StudioContext
from .wiring import Wiring


@dataclass
class RunPanel:
    run_id: gr.Number  # the open run
    cancel: gr.Button
    history: gr.Dataframe  # one row per run, with an "id" column


def wire(w: Wiring, ctx: StudioContext, panel: RunPanel, view: Callable[[int], tuple], view_outputs: list,
         stopping: str = "Run {run_id} will stop at its next item.") -> None:
    """Bind the history's row click and the cancel button; ``view(run_id)`` fills ``view_outputs``."""

    def on_row(request: gr.Request, frame: pd.DataFrame, evt: gr.SelectData):
        run_id = int(frame.iloc[evt.index[0]]["id"])
        shown = view(run_id)
        return (run_id, *shown) if isinstance(shown, tuple) else (run_id, shown)

    w.on(panel.history.select, on_row, [panel.history], [panel.run_id, *view_outputs])

    def on_cancel(request: gr.Request, run_id):
        if not runs.cancel(ctx.ws, parse_id(run_id, "run id")):
            raise ValueError(f"run {run_id} has already finished")
        gr.Info(stopping.format(run_id=run_id))
        return view(run_id)

    w.on(panel.cancel.click, on_cancel, [panel.run_id], view_outputs)
