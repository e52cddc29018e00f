"""Annotate tab: where annotators work. Human-evaluation studies fill it (evaluation issue)."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr


@dataclass
class AnnotateTab:
    tab: gr.Tab
    info: gr.Markdown


def build() -> AnnotateTab:
    with gr.Tab("Annotate", id="annotate", visible=False) as tab:
        info = gr.Markdown()
    return AnnotateTab(tab, info)


def message(user: str | None) -> str:
    who = f"Signed in as **{user}**. " if user else ""
    return who + "No human-evaluation study is assigned to you yet."
