"""Assemble the studio's Blocks app: every tab is built first, then wired, then the page-load event
shows each user the tabs of their role and fills them."""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no outside network at launch

import gradio as gr  # noqa: E402

from . import annotate, browse, captions, evaluate, generate, runs, statistics, training  # noqa: E402
from ..config import ASSETS_DIR  # noqa: E402
from .access import StudioContext, role, username  # noqa: E402
from .pages import follow  # noqa: E402


#: the largest upload (a reference or pose photo in Generate) in MB, unless STUDIO_MAX_UPLOAD_MB says otherwise
MAX_UPLOAD_MB = 25
#: Gradio's cached copies (uploads, served photos, exports) older than this many hours are deleted hourly
CACHE_MAX_AGE_H = 24


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e9:  # NaN and inf too
        raise ValueError(f"{name} must be a positive number, got {raw!r}")
    return value


def max_upload_bytes() -> int:
    """The upload cap Gradio enforces (413 above it): ``STUDIO_MAX_UPLOAD_MB``, default 25."""
    return int(_env_number("STUDIO_MAX_UPLOAD_MB", MAX_UPLOAD_MB) * 1024 * 1024)


def cache_policy() -> tuple[int, int]:
    """Gradio's ``delete_cache`` (every hour, files older than ``STUDIO_CACHE_MAX_AGE_H`` hours, default 24)."""
    age = _env_number("STUDIO_CACHE_MAX_AGE_H", CACHE_MAX_AGE_H)
    return 3600, int(age * 3600)


def build_app(ctx: StudioContext) -> gr.Blocks:
    with gr.Blocks(title="CrossFaceID Studio", delete_cache=cache_policy()) as demo:
        with gr.Row():
            gr.Markdown("# CrossFaceID Studio")
            who = gr.Markdown(elem_id="who")
            if ctx.policy.mode == "hf":
                gr.LoginButton()
        notice = gr.Markdown(visible=bool(ctx.note), value=notice_markdown(ctx.note), elem_id="notice")
        # refreshes run progress; outside the tabs so it ticks on every tab; started by the page load for
        # admins only (an annotator's page has no run to follow)
        clock = gr.Timer(2.0, active=False)
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
        generate.wire(ctx, g)
        follow(clock, [captions.wire(ctx, c), training.wire(ctx, tr), evaluate.wire(ctx, ev), runs.wire(ctx, r)])
        annotate.wire(ctx, a, demo)

        persons, poses, tags = b.filters["persons"], b.filters["pose"], b.filters["tags"]
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
            return [header, gr.Markdown(visible=is_admin and bool(ctx.note)), gr.Timer(active=is_admin), *shown, *data]

        demo.load(on_load, None, [who, notice, clock, b.tab, s.tab, c.tab, g.tab, tr.tab, ev.tab, r.tab, a.tab, tabs, *admin_outputs],
                  api_visibility="private")
    return demo


def notice_markdown(note: str) -> str:
    """The server's notice (e.g. which face pack stands in for antelopev2) as one line, the rest on a click:
    it sits above every tab."""
    if not note:
        return ""
    head, _, rest = note.partition("; ")
    if not rest:
        return f"⚠ {note}"
    return f"<details><summary>⚠ {head}</summary>\n\n{rest}\n</details>"


def idle_politely(demo: gr.Blocks, pickup_s: float = 0.02, progress_s: float = 0.1) -> None:
    """Poll Gradio's event queue every ``pickup_s`` while nothing is queued, not every millisecond.

    Gradio's queue loop sleeps 1 ms between checks of an empty queue (10 ms for progress) on Linux:
    an idle studio then keeps about 7% of a core busy, measured here, for as long as it is up (a
    Space, a lab server, every app a test suite starts). 20 ms is below what a person notices.
    """
    queue = getattr(demo, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = pickup_s
        queue.progress_update_sleep_when_free = progress_s


def launch(ctx: StudioContext, host: str, port: int, *, block: bool = True) -> gr.Blocks:
    """Serve the studio: the file guard in front of every route, uploads capped, the workspace never
    an allowed path (pages get single files, see media.py; the database and users file are blocked)."""
    from starlette.middleware import Middleware

    from ..workspace import DB_NAME
    from .guard import FileGuard

    policy = ctx.policy
    private = [ctx.ws.root / f"{DB_NAME}{suffix}" for suffix in ("", "-wal", "-shm", "-journal")]
    if policy.users is not None:
        private.append(policy.users.path.resolve())
    auth = (lambda user, password: policy.users.verify(user, password)) if policy.mode == "local" else None
    demo = build_app(ctx)
    idle_politely(demo)
    # _frontend=False skips only Gradio's last start-up probe: a HEAD of "/" with a 3 s timeout that, on a
    # busy machine, raises "When localhost is not accessible..." and stops a healthy studio. The request
    # to the app's own start-up events just before it (no timeout) has already reached the server.
    demo.launch(_frontend=False, server_name=host, server_port=port, auth=auth, allowed_paths=[str(ASSETS_DIR / "ui")],
                blocked_paths=[str(p) for p in private], show_error=False, auth_message="CrossFaceID Studio: sign in",
                head=annotate.KEYBOARD_JS + captions.KEYBOARD_JS, css=annotate.CSS, max_file_size=max_upload_bytes(),
                prevent_thread_lock=not block,
                app_kwargs={"middleware": [Middleware(FileGuard, policy=policy, grants=ctx.grants)]})
    return demo
