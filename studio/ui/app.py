"""Assemble the studio's Blocks app from the tab modules."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no outside network at launch

import gradio as gr  # noqa: E402

from ..workspace import Workspace  # noqa: E402
from . import overview  # noqa: E402


def build_app(ws: Workspace, note: str = "") -> gr.Blocks:
    """One Blocks app; every tab builds its components first, then the app wires page-load events."""
    with gr.Blocks(title="CrossFaceID Studio") as demo:
        gr.Markdown("# CrossFaceID Studio\nFaceID-customization datasets: ingest, analyze, curate.")
        overview_outputs = overview.build(ws, note)
        demo.load(lambda: overview.overview_data(ws), outputs=overview_outputs)
    return demo
