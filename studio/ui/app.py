"""Assemble the studio's Blocks app: every tab is built first, then wired, then the page-load event
shows each user the tabs of their role and fills them."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no outside network at launch

import gradio as gr  # noqa: E402

from . import annotate, browse, captions, evaluate, generate, runs, statistics, training  # noqa: E402
from .access import StudioContext, role, username  # noqa: E402


def build_app(ctx: StudioContext) -> gr.Blocks:
    with gr.Blocks(title="CrossFaceID Studio") as demo:
        with gr.Row():
            gr.Markdown("# CrossFaceID Studio")
            who = gr.Markdown(elem_id="who")
            if ctx.policy.mode == "hf":
                gr.LoginButton()
        notice = gr.Markdown(visible=bool(ctx.note), value=f"> {ctx.note}" if ctx.note else "")
        clock = gr.Timer(2.0)  # refreshes run progress; outside the tabs so it ticks on every tab
        # tabs start hidden; the page-load event reveals those of the caller's role
        with gr.Tabs() as tabs:
            b = browse.build()
            s = statistics.build()
            c = captions.build()
            g = generate.build()
            tr = training.build()
            ev = evaluate.build()
            r = runs.build()
            a = annotate.build()
        browse.wire(ctx, b)
        statistics.wire(ctx, s)
        captions.wire(ctx, c, clock)
        generate.wire(ctx, g)
        training.wire(ctx, tr, clock)
        evaluate.wire(ctx, ev, clock)
        runs.wire(ctx, r, clock)
        annotate.wire(ctx, a, demo)

        persons, poses, tags = b.filters[0], b.filters[3], b.filters[4]
        admin_outputs = [persons, poses, tags, b.summary, b.gallery, b.ids, b.page, g.weights, g.models, c.readiness]

        def on_load(request: gr.Request):
            user, role_ = username(ctx, request), role(ctx, request)
            is_admin = role_ == "admin"
            header = {"admin": f"**{user or 'local user'}** · admin", "annotator": f"**{user}** · annotator",
                      None: "Sign in to use the studio." if ctx.policy.mode == "hf" else "No access for this account."}[role_]
            shown = [*(gr.Tab(visible=is_admin) for _ in range(7)), gr.Tab(visible=role_ is not None),
                     gr.Tabs(selected="browse" if is_admin else "annotate")]
            if is_admin:
                data = [*browse.choices_update(ctx), *browse.first_page(ctx), *generate.models_update(ctx),
                        captions.readiness(ctx)]
            else:
                data = [gr.update()] * len(admin_outputs)
            return [header, gr.Markdown(visible=is_admin and bool(ctx.note)), *shown, *data]

        demo.load(on_load, None, [who, notice, b.tab, s.tab, c.tab, g.tab, tr.tab, ev.tab, r.tab, a.tab, tabs, *admin_outputs],
                  api_visibility="private")
    return demo
