"""Statistics tab: Table 1 before/after curation and the distributions as native gradio plots."""
from __future__ import annotations

import math
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ..dataset.stats import TABLE1_ROWS, distribution_frames, stale_message
from .access import StudioContext
from .wiring import Wiring


@dataclass
class StatisticsTab:
    tab: gr.Tab
    table1: gr.Dataframe
    reasons: gr.BarPlot
    per_person_before: gr.BarPlot
    per_person_after: gr.BarPlot
    pose: gr.BarPlot
    attributes: gr.BarPlot
    attributes_note: gr.Markdown
    refresh: gr.Button


def build() -> StatisticsTab:
    with gr.Tab("Statistics", id="statistics", visible=False) as tab:
        refresh = gr.Button("Refresh")
        table1 = gr.Dataframe(label="Table 1: dataset statistics", interactive=False, elem_id="table1")
        with gr.Row():
            reasons = gr.BarPlot(x="reason", y="images", color="stage", title="Rejections by reason", x_label_angle=-30,
                                 elem_id="plot-reasons")
        with gr.Row():
            per_person_before = gr.BarPlot(x="images per person", y="persons", title="Images per person, before curation",
                                             elem_id="plot-per-person-before")
            per_person_after = gr.BarPlot(x="images per person", y="persons", title="Images per person, after curation",
                                            elem_id="plot-per-person-after")
        with gr.Row():
            pose = gr.BarPlot(x="pose", y="images", title="Pose (kept images)", elem_id="plot-pose")
            attributes = gr.BarPlot(x="attribute", y="images", title="Facial attributes (kept images)", x_label_angle=-30)
        attributes_note = gr.Markdown()
    return StatisticsTab(tab, table1, reasons, per_person_before, per_person_after, pose, attributes, attributes_note,
                         refresh)


def table1_frame(stats: dict) -> pd.DataFrame:
    """Before/after curation, then one column per person split (kept images) once persons are split."""
    t, by_split = stats["table1"], stats.get("table1_by_split", {})
    return pd.DataFrame([(label, t["before_curation"][k], t["after_curation"][k], *(v[k] for v in by_split.values()))
                         for k, label in TABLE1_ROWS],
                        columns=["", "before curation", "after curation", *(f"{s} split" for s in by_split)])


def count_axis_top(top: float) -> int:
    """Top of a count axis: at least 10, so that the axis ticks fall on whole numbers."""
    return max(10, math.ceil(top * 1.1))


def _bars(df: pd.DataFrame, y: str, visible: bool = True, x: str | None = None) -> gr.BarPlot:
    """A count bar plot: y from 0 (vega mis-scales a single bar otherwise), whole-number ticks; with ``x`` the
    bars keep the frame's order (images per person: 1, 2, ... 10, not 1, 10, 2)."""
    top = float(df[y].max()) if len(df) else 1.0
    order = {"sort": list(df[x])} if x else {}
    return gr.BarPlot(value=df, y_lim=[0, count_axis_top(top)], y_axis_format="d", visible=visible, **order)


def statistics_values(ctx: StudioContext):
    frames = distribution_frames(ctx.ws)
    has_tags = bool(len(frames["attributes"]))
    note = "" if has_tags else ("**Facial attributes:** no attribute tags yet. Tags come from captions: caption the "
                                "kept images in the Captions tab (or `python -m studio caption`), or re-tag with "
                                "`python -m studio tag`.")
    stale = stale_message(frames["stats"]["stale_verdicts"])
    note = (f"**Warning:** {stale}\n\n" if stale else "") + note
    hist = frames["images_per_person"]
    return (table1_frame(frames["stats"]), _bars(frames["reasons"], "images"),
            *(_bars(hist[hist.stage == stage].reset_index(drop=True), "persons", x="images per person")
              for stage in ("before curation", "after curation")),
            _bars(frames["pose"], "images", x="pose"), _bars(frames["attributes"], "images", visible=has_tags), note)


def wire(ctx: StudioContext, t: StatisticsTab) -> None:
    w = Wiring(ctx)
    outputs = [t.table1, t.reasons, t.per_person_before, t.per_person_after, t.pose, t.attributes, t.attributes_note]

    def on_refresh(request: gr.Request):
        return statistics_values(ctx)

    w.on(t.refresh.click, on_refresh, None, outputs)
    w.on(t.tab.select, on_refresh, None, outputs)  # computed when looked at, not at page load

    def statistics_api(request: gr.Request) -> dict:
        """Table 1 before/after curation, rejection and ingest-problem counts, pose counts."""
        return distribution_frames(ctx.ws)["stats"]

    w.api(statistics_api, "statistics")
