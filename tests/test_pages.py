"""Per open page: the refresh clock (one event per tick, admins only) and what a page was last sent
(a refresh re-sends only what changed; the Annotate view is filled once per item). Checked on the app
the studio builds, calling its handlers as Gradio would, with a page's session."""
from __future__ import annotations

import gradio as gr
import pandas as pd
import pytest

from studio.human import studies as he
from studio.ui.pages import PageMemory

SKIP = gr.skip()


def test_page_memory_is_per_page_and_per_key_and_bounded():
    m = PageMemory(capacity=3)
    assert m.changed("p1", "k", 1) and not m.changed("p1", "k", 1)
    assert m.changed("p1", "k", 2) and not m.changed("p1", "k", 2)  # a new value is sent once
    assert m.changed("p2", "k", 2) and m.changed("p1", "other", 2)  # another page, another key
    assert m.changed(None, "k", 1) and m.changed(None, "k", 1)  # no session: always sent
    for page in ("p3", "p4", "p5"):
        m.changed(page, "k", 0)
    assert m.changed("p1", "k", 2)  # forgotten: the three most recent pages are kept


def test_only_changes_skips_what_the_page_already_has():
    m = PageMemory()
    calls = {"n": 0}

    @m.only_changes("demo")
    def refresh(request: gr.Request, n):
        calls["n"] += 1
        return pd.DataFrame({"a": [n]}), f"status {n}", SKIP

    page, other = gr.Request(session_hash="page"), gr.Request(session_hash="other")
    first = refresh(page, 1)
    assert first[0]["a"].tolist() == [1] and first[1] == "status 1" and first[2] == SKIP
    assert refresh(page, 1) == (SKIP, SKIP, SKIP)  # nothing changed: nothing re-sent
    again = refresh(page, 2)
    assert again[0]["a"].tolist() == [2] and again[1] == "status 2"
    assert refresh(other, 2)[1] == "status 2"  # another page gets everything
    assert calls["n"] == 4  # the handler itself always runs


@pytest.fixture()
def app(tmp_path, photos, users_file):
    import shutil

    from studio.auth import AccessPolicy, UsersFile
    from studio.ui.access import StudioContext
    from studio.ui.app import build_app
    from studio.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    (ws.root / "generated").mkdir()
    items = []
    for i, name in enumerate(("obama", "biden")):
        shutil.copy(photos[name], ws.root / "generated" / f"m_{i}.png")
        items.append({"model": "m", "prompt": f"a person smiling {i}", "face_path": f"generated/m_{i}.png",
                      "image_path": f"generated/m_{i}.png"})
    he.create_study(ws, "s", items, ["ann"], per_item=1)
    he.set_status(ws, "s", "open")
    ctx = StudioContext(ws=ws, policy=AccessPolicy("local", users=UsersFile(users_file)), face_pack="bundled")
    return ctx, build_app(ctx)


def _handlers(demo, elem_id: str) -> list:
    """The app's event handlers that write the component with ``elem_id``."""
    return [f for f in demo.fns.values() if any(getattr(o, "elem_id", None) == elem_id for o in f.outputs)]


def test_the_refresh_clock_is_one_event_outside_the_queue_started_for_admins_only(app):
    ctx, demo = app
    ticks = [f for f in demo.fns.values() if any(name == "tick" for _, name in f.targets)]
    assert len(ticks) == 1 and ticks[0].queue is False
    timer = next(b for b in demo.blocks.values() if isinstance(b, gr.Timer))
    assert timer.active is False  # until the page load says who is looking
    load = next(f for f in demo.fns.values() if timer in f.outputs and any(n == "load" for _, n in f.targets))
    at = load.outputs.index(timer)
    for user, active in (("ada", True), ("ann", False)):  # an admin, an annotator
        out = load.fn(gr.Request(username=user, session_hash=f"page-{user}"))
        assert out[at].active is active, user


def test_a_page_is_filled_once_per_item_so_a_late_select_keeps_what_the_annotator_set(app):
    """Page load and the tab's select both fill the Annotate view (an annotator's page selects the tab once
    the queued page load returns): the later one must not blank scales or a comment set in between."""
    ctx, demo = app
    fills = _handlers(demo, "annotate-position")
    load = next(f for f in fills if any(n == "load" for _, n in f.targets))
    select = next(f for f in fills if any(n == "select" for _, n in f.targets))
    assert load.fn is select.fn
    at = load.outputs.index(next(o for o in load.outputs if o.elem_id == "annotate-position"))
    comment_at = load.outputs.index(next(o for o in load.outputs if o.elem_id == "annotate-comment"))
    page = gr.Request(username="ann", session_hash="page-1")
    first = load.fn(page)
    assert first[at] == 1
    late = select.fn(page)  # the same page, the same item: left as the annotator has it
    assert late[at] == SKIP and late[comment_at] == SKIP
    assert load.fn(gr.Request(username="ann", session_hash="page-2"))[at] == 1  # a reload is a new page
    save = next(f for f in _handlers(demo, "annotate-position") if any(n == "click" for _, n in f.targets)
                and "save" in f.name)
    moved = save.fn(page, "s", 1, "", "4", "5", "3")
    assert moved[[o.elem_id for o in save.outputs].index("annotate-position")] == 2
    assert select.fn(page)[at] == SKIP  # the page shows item 2, the first unscored one: kept
