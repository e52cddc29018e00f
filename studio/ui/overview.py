"""Overview tab: Table 1 before/after curation, rejection reasons, and the photos with verdicts."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from ..stats import dataset_stats, image_list
from ..workspace import Workspace

TABLE1_ROWS = [("persons", "Persons"), ("images", "Images"), ("avg_per_person", "Avg images / person"),
               ("median_per_person", "Median images / person"), ("max_per_person", "Max images / person"),
               ("min_per_person", "Min images / person")]


def overview_data(ws: Workspace) -> tuple[pd.DataFrame, pd.DataFrame, list[tuple[str, str]]]:
    """Table 1, reasons and gallery items, computed by the same functions as `studio stats/list`."""
    images = image_list(ws)
    stats = dataset_stats(ws, images)
    t = stats["table1"]
    table = pd.DataFrame(
        [(label, t["before_curation"][k], t["after_curation"][k]) for k, label in TABLE1_ROWS],
        columns=["", "before curation", "after curation"],
    )
    reasons = pd.DataFrame(
        list(stats["rejections_by_reason"].items()) + [(f"ingest: {k}", v) for k, v in stats["ingest_problems_by_reason"].items()],
        columns=["reason", "count"],
    )
    gallery = [
        (str(ws.media_path(im["media_path"])),
         f"{im['person']} · {im['status'].upper()}" + (f" · {', '.join(im['reasons'])}" if im["reasons"] else ""))
        for im in images
    ]
    return table, reasons, gallery


def build(ws: Workspace, note: str = "") -> list[gr.components.Component]:
    """Build the tab inside the current Blocks context."""
    with gr.Tab("Overview"):
        gr.Markdown(f"Workspace: `{ws.root}`" + (f"\n\n> {note}" if note else ""))
        with gr.Row():
            table = gr.Dataframe(label="Table 1: dataset statistics", interactive=False)
            reasons = gr.Dataframe(label="Rejections by reason", interactive=False)
        gallery = gr.Gallery(label="Photos (person · verdict · reasons)", columns=6, height="auto")
        refresh = gr.Button("Refresh")
    outputs = [table, reasons, gallery]
    refresh.click(lambda: overview_data(ws), outputs=outputs, api_name="overview")
    return outputs
