"""Captions tab: run GPT-4o captioning, then review captions side by side with the photo.

The API key field is a password box whose value lives only in the request that uses it: it is
never put in a State, the workspace or a log. Empty means the server's OPENAI_API_KEY.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from ..captions import review
from ..runs import jobs as runs
from ..captions.captioner import FLAGS, CaptionSettings, regenerate
from ..codes import RunStatus
from ..runs.stages import CaptionRunSettings
from ..validate import parse_id, plural
from .access import StudioContext, username
from .pages import Refresh, shown_time
from .wiring import Wiring

ACTIONS = ("approve", "reject", "edit", "regenerate")
VERSIONS = ["version", "status", "by", "when (UTC)", "flags", "text"]

#: review keys: a approve, r reject, e edit (focus the caption; Ctrl+Enter saves it), n next
KEYBOARD_JS = """
<script>
(() => {
  const click = (id) => document.getElementById(id)?.click();
  document.addEventListener("keydown", (e) => {
    const pane = document.getElementById("caption-review");
    if (!pane || pane.offsetParent === null || e.altKey || e.metaKey) return;
    const t = e.target, tag = (t.tagName || "").toLowerCase();
    if (tag === "textarea" && t.closest("#caption-text")) {
      if (e.key === "Enter" && e.ctrlKey) { click("caption-save"); e.preventDefault(); }
      else if (e.key === "Escape") { t.blur(); }
      return;
    }
    if (e.ctrlKey || tag === "textarea" || tag === "input" || tag === "select") return;  // typing elsewhere
    const id = {a: "caption-approve", r: "caption-reject", n: "caption-next"}[e.key];
    if (id) { click(id); e.preventDefault(); }
    else if (e.key === "e") { document.querySelector("#caption-text textarea")?.focus(); e.preventDefault(); }
  });
})();
</script>
"""


@dataclass
class CaptionsTab:
    tab: gr.Tab
    api_key: gr.Textbox
    base_url: gr.Textbox
    model: gr.Textbox
    concurrency: gr.Slider
    kept_only: gr.Checkbox
    overwrite: gr.Checkbox
    readiness: gr.Markdown
    run: gr.Button
    run_summary: gr.Markdown
    run_id: gr.Number
    status: gr.Dropdown
    flag: gr.Dropdown
    person: gr.Textbox
    load: gr.Button
    bulk: gr.Button
    queue_summary: gr.Markdown
    queue: gr.Gallery
    ids: gr.State
    current: gr.Number
    version: gr.Number
    header: gr.Markdown
    photo: gr.Image
    caption: gr.Textbox
    flags: gr.Markdown
    history: gr.Dataframe
    approve: gr.Button
    reject: gr.Button
    save: gr.Button
    regen: gr.Button
    next: gr.Button


def base_url_label() -> str:
    """What an empty Base URL means on this server: the OpenAI client reads OPENAI_BASE_URL when it is set."""
    if os.environ.get("OPENAI_BASE_URL"):
        return "Base URL (empty: the server's OPENAI_BASE_URL; or any OpenAI-compatible server)"
    return "Base URL (empty: OpenAI; or any OpenAI-compatible server)"


def build() -> CaptionsTab:
    with gr.Tab("Captions", id="captions", visible=False) as tab:
        with gr.Accordion("Caption images (GPT-4o, the paper's prompt and parameters)", open=True):
            with gr.Row():
                api_key = gr.Textbox(label="API key (this session only; empty: the server's OPENAI_API_KEY)",
                                     type="password", elem_id="api-key")
                base_url = gr.Textbox(label=base_url_label(), placeholder="http://127.0.0.1:8000/v1", elem_id="base-url")
                model = gr.Textbox(label="Model", value="gpt-4o")
                concurrency = gr.Slider(1, 64, value=8, step=1, label="Requests in flight", elem_id="caption-concurrency")
                kept_only = gr.Checkbox(label="Only images that passed curation", value=True, elem_id="kept-only")
                overwrite = gr.Checkbox(label="Replace captions a person approved or edited", value=False)
            readiness = gr.Markdown(elem_id="caption-readiness")
            run = gr.Button("Caption", variant="primary")
            run_summary = gr.Markdown(elem_id="caption-run-summary")
            run_id = gr.Number(visible=False, precision=0)  # the caption run this page follows
        with gr.Row():
            status = gr.Dropdown(["any", *review.REVIEW_STATUSES], value="generated", label="Status")
            flag = gr.Dropdown(["any flag", "no flag", *FLAGS], value="any flag", label="Flag")
            person = gr.Textbox(label="Person", placeholder="all")
            load = gr.Button("Load queue")
            bulk = gr.Button("Approve all unflagged")
        queue_summary = gr.Markdown(elem_id="caption-queue-summary")
        queue = gr.Gallery(label="Queue", columns=8, height="auto", allow_preview=False, elem_id="caption-queue")
        ids = gr.State([])
        current = gr.Number(visible=False, precision=0)
        version = gr.Number(visible=False, precision=0)  # the version on screen: actions on an older one are refused
        with gr.Column(elem_id="caption-review"):
            header = gr.Markdown("Pick a caption from the queue (keys: **a** approve, **r** reject, **e** edit "
                                 "then **Ctrl+Enter** to save, **n** next).", elem_id="caption-current")
            with gr.Row():
                photo = gr.Image(label="Photo", interactive=False, height=420, elem_id="caption-photo")
                with gr.Column():
                    caption = gr.Textbox(label="Caption", lines=5, elem_id="caption-text")
                    flags = gr.Markdown()
                    with gr.Row():
                        approve = gr.Button("Approve (a)", variant="primary", elem_id="caption-approve")
                        reject = gr.Button("Reject (r)", variant="stop", elem_id="caption-reject")
                        save = gr.Button("Save edit (Ctrl+Enter)", elem_id="caption-save")
                        regen = gr.Button("Regenerate")
                        nxt = gr.Button("Next (n)", elem_id="caption-next")
        history = gr.Dataframe(headers=VERSIONS, label="Versions", interactive=False)
    return CaptionsTab(tab, api_key, base_url, model, concurrency, kept_only, overwrite, readiness, run, run_summary,
                       run_id, status, flag, person, load, bulk, queue_summary, queue, ids, current, version, header,
                       photo, caption, flags, history, approve, reject, save, regen, nxt)


def _settings(base_url: str, model: str, concurrency) -> CaptionSettings:
    return CaptionSettings(base_url=(base_url or "").strip() or None, model=(model or "").strip() or "gpt-4o",
                           concurrency=int(concurrency or 8))


def _key(typed: str | None) -> str | None:
    return (typed or "").strip() or os.environ.get("OPENAI_API_KEY")


def readiness(ctx: StudioContext) -> str:
    """What stands between the user and a caption run, said before they click."""
    parts = []
    if not os.environ.get("OPENAI_API_KEY"):
        parts.append("No API key is set on the server (`OPENAI_API_KEY`): enter one above; it is used for "
                     "your requests only and never stored.")
    statuses = dict((s, n) for s, n in ctx.ws.store.caption_status_counts())
    captioned = sum(n for s, n in statuses.items() if s != "none")
    if not captioned:
        parts.append("Nothing is captioned yet: **Caption** asks the model for every selected image.")
    else:
        parts.append(f"{plural(captioned, 'image')} captioned (" + ", ".join(f"{s} {n}" for s, n in sorted(statuses.items())
                                                                       if s != "none") + ").")
    last = ctx.ws.store.runs(kind="caption", limit=1)
    if last and last[0]["status"] == RunStatus.DONE and last[0]["result"]:
        parts.append(f"\n\nLast caption run **{last[0]['id']}** (ended {shown_time(last[0]['ended_at'])} UTC): "
                     + summary_text(last[0]["result"]))
    return " ".join(parts)


def start_captioning(ctx: StudioContext, api_key, base_url, model, concurrency, kept_only, author,
                     overwrite_reviewed: bool = False) -> int:
    """Submit a caption run (a worker reading its settings from the run); returns its id.

    The key reaches the worker through its environment only."""
    client = _settings(base_url, model, concurrency)
    key = _key(api_key)
    if not key:
        raise ValueError("no API key: enter one above (used for this run only) or set OPENAI_API_KEY on the server")
    settings = CaptionRunSettings.from_dict({"model": client.model, "concurrency": client.concurrency,
                                             "base_url": client.base_url, "all": not kept_only,
                                             "overwrite_reviewed": bool(overwrite_reviewed)})
    return runs.submit(ctx.ws, settings, author, secrets_env={"OPENAI_API_KEY": key})


def run_status_text(ctx: StudioContext, run_id) -> str:
    """Progress of a caption run, then its report."""
    if run_id in (None, "", 0):
        return gr.skip()
    runs.reap(ctx.ws)
    r = ctx.ws.store.run(int(run_id))
    if r is None:
        return ""
    d = runs.describe(r)
    if r["status"] == RunStatus.DONE and r["result"]:
        return f"Run {r['id']} done. " + summary_text(r["result"])
    text = f"Caption run **{r['id']}**: {r['status']}, {d['progress']} (follow it in the Runs tab too)."
    if r["error"]:
        text += f" {r['error']}"
    if r["status"] == RunStatus.CANCELLED:
        text += " Click Caption again to resume: finished images are not asked again."
    return text


def summary_text(r: dict) -> str:
    text = (f"Captioned **{r['captioned']}**, already done {r['skipped']}, failed {r['failed']} in {r['seconds']} s · "
            f"tokens {r['prompt_tokens']:,} in / {r['completion_tokens']:,} out · estimated cost "
            f"${r['cost_usd']:.4f} (${r['cost_per_caption_usd']:.5f} per caption)")
    if r["kept_reviewed"]:
        text += (f" · {plural(r['kept_reviewed'], 'image')} kept the caption a person approved or edited "
                 "(the new one is stored as a version)")
    if r["flagged"]:
        text += " · flagged: " + ", ".join(f"{k} {v}" for k, v in r["flagged"].items())
    if r["errors"]:
        text += "\n\n" + "\n".join(f"- {e}" for e in r["errors"][:20])
    return text


def _queue_filters(status, flag, person):
    return {"status": None if status in (None, "", "any") else status,
            "flag": {"any flag": None, "no flag": "none", None: None, "": None}.get(flag, flag),
            "person": (person or "").strip() or None}


def queue_data(ctx: StudioContext, status, flag, person, limit: int = 96) -> tuple[list[dict], int]:
    return ctx.ws.store.caption_queue(**_queue_filters(status, flag, person), limit=limit)


def _by(h: dict) -> str:
    """Who wrote a version: the model for a machine caption (its run's starter is not its author)."""
    if h["origin"] == "human":
        return h["author"]
    return h["model"] or h["origin"]


def detail(ctx: StudioContext, image_id, position: str = ""):
    """(version, header, photo, text, flags line, versions table) of an image's current caption."""
    image_id = parse_id(image_id)
    cur = ctx.ws.store.current_caption(image_id)
    if cur is None:
        raise ValueError(f"image {image_id} has no caption")
    row = ctx.ws.store.image_table(image_ids=[image_id])[0]
    history = ctx.ws.store.caption_history(image_id)
    hist = pd.DataFrame([(h["version"], h["status"], _by(h), shown_time(h["created_at"]),
                          ", ".join(h["flags"]), h["text"]) for h in history],
                        columns=VERSIONS)
    flags = ("**Flags:** " + ", ".join(cur["flags"])) if cur["flags"] else "No flags."
    newer = [h for h in history if h["version"] > cur["version"]]
    note = (f" A newer model caption (version {newer[-1]['version']}) is kept beside this reviewed one; see Versions."
            if newer else "")
    header = (f"### #{image_id} · {row['person'] or 'no person'} · {Path(row['source'] or row['media_path']).name}"
              + (f"\n{position}" if position else ""))
    return (cur["version"], header, ctx.media.file(row["media_path"]), cur["text"],
            f"{flags} Status: **{cur['status']}** (version {cur['version']}, by {_by(cur)}).{note}", hist)


def act(ctx: StudioContext, image_id, version, action: str, text: str, author: str, api_key=None, base_url=None,
        model=None, concurrency=None) -> dict:
    """One review action on the caption version the reviewer saw."""
    if image_id is None or image_id == "":
        raise ValueError("pick a caption from the queue first")
    image_id = parse_id(image_id)
    if action == "regenerate":
        return regenerate(ctx.ws, image_id, _settings(base_url, model, concurrency), _key(api_key), author)
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {ACTIONS}")
    if version is None or version == "":
        raise ValueError("say which caption version you reviewed (the version shown with it)")
    version = parse_id(version, "version")
    if action == "approve":
        return review.approve(ctx.ws, image_id, version, author)
    if action == "reject":
        return review.reject(ctx.ws, image_id, version, author)
    return review.edit(ctx.ws, image_id, version, text, author)


def wire(ctx: StudioContext, t: CaptionsTab) -> Refresh:
    """Returns the tab's part of the page's refresh clock: a caption run's progress."""
    w = Wiring(ctx)

    def who(request) -> str:
        return username(ctx, request) or "local admin"

    def on_run(request: gr.Request, api_key, base_url, model, concurrency, kept_only, overwrite):
        run_id = start_captioning(ctx, api_key, base_url, model, concurrency, kept_only, who(request), overwrite)
        return run_status_text(ctx, run_id), run_id

    w.on(t.run.click, on_run, [t.api_key, t.base_url, t.model, t.concurrency, t.kept_only, t.overwrite],
         [t.run_summary, t.run_id])

    def on_tick(request: gr.Request, run_id):
        if run_id in (None, "", 0):
            return gr.skip()
        return run_status_text(ctx, run_id)

    refresh = Refresh(w.guard(on_tick, [t.run_summary], quiet=True), [t.run_id], [t.run_summary])

    def queue_view(status, flag, person):
        rows, total = queue_data(ctx, status, flag, person)
        faces = ctx.ws.store.subject_faces([r["image_id"] for r in rows])
        # one gallery item per row (a placeholder for a deleted photo), so a click's index finds its image id
        items = [(ctx.media.face_thumbnail(r["media_path"], faces[r["image_id"]].bbox if r["image_id"] in faces else None),
                  f"#{r['image_id']} {r['person']} · {r['status']}" + (f" · {', '.join(r['flags'])}" if r["flags"] else ""))
                 for r in rows]
        return f"{plural(total, 'caption')} in this queue (showing {len(items)})", items, [r["image_id"] for r in rows]

    def on_load(request: gr.Request, status, flag, person):
        return queue_view(status, flag, person)

    queue_io = ([t.status, t.flag, t.person], [t.queue_summary, t.queue, t.ids])
    w.on(t.load.click, on_load, *queue_io)

    detail_outputs = [t.current, t.version, t.header, t.photo, t.caption, t.flags, t.history]

    def shown(image_id, ids: list) -> tuple:
        """The review pane for one image, with its place in the queue."""
        where = f"{ids.index(image_id) + 1} of {len(ids)} in the queue" if image_id in ids else "not in the queue"
        return (image_id, *detail(ctx, image_id, where))

    def on_select(request: gr.Request, ids: list, evt: gr.SelectData):
        return shown(ids[evt.index], ids)

    w.on(t.queue.select, on_select, [t.ids], detail_outputs)

    def moved_on(acted, ids: list, status, flag, person, stay: bool = False) -> tuple:
        """The queue read again in place, and the pane on the item after ``acted`` (the same one to ``stay``)."""
        summary, items, new_ids = queue_view(status, flag, person)
        after = ids[ids.index(acted) + 1:] if acted in ids else []
        nxt = acted if stay else next((i for i in after if i in new_ids), None)
        if nxt is None and not stay:  # past the end: back to the first item still waiting, other than this one
            nxt = next((i for i in new_ids if i != acted), None)
        if nxt is None:
            pane = (None, None, "The queue is done: nothing else matches these filters.", None, "", "", pd.DataFrame(columns=VERSIONS))
        else:
            pane = shown(nxt, new_ids)
        return (summary, items, new_ids, *pane)

    def on_action(action):
        def handler(request: gr.Request, image_id, version, text, api_key, base_url, model, concurrency, ids, status,
                    flag, person):
            act(ctx, image_id, version, action, text, who(request), api_key, base_url, model, concurrency)
            return moved_on(parse_id(image_id), ids or [], status, flag, person, stay=action == "regenerate")
        return handler

    action_inputs = [t.current, t.version, t.caption, t.api_key, t.base_url, t.model, t.concurrency, t.ids,
                     t.status, t.flag, t.person]
    action_outputs = [t.queue_summary, t.queue, t.ids, *detail_outputs]
    for button, action in ((t.approve, "approve"), (t.reject, "reject"), (t.save, "edit"), (t.regen, "regenerate")):
        w.on(button.click, on_action(action), action_inputs, action_outputs)

    def on_next(request: gr.Request, image_id, ids):
        if image_id in (None, "", 0):
            if not ids:
                raise ValueError("load a queue first")
            return shown(ids[0], ids)
        ids = ids or []
        image_id = parse_id(image_id)
        after = ids[ids.index(image_id) + 1:] if image_id in ids else ids
        if not after:
            raise ValueError("this is the last caption of the queue")
        return shown(after[0], ids)

    w.on(t.next.click, on_next, [t.current, t.ids], detail_outputs)

    def on_bulk(request: gr.Request, status, flag, person):
        n = review.bulk_approve_unflagged(ctx.ws, who(request))
        summary, items, ids = queue_view(status, flag, person)
        return f"Approved {plural(n, 'unflagged caption')}. " + summary, items, ids

    w.on(t.bulk.click, on_bulk, *queue_io)

    def caption_run_api(request: gr.Request, api_key: str = "", base_url: str = "", model: str = "gpt-4o",
                        concurrency: int = 8, kept_only: bool = True, overwrite_reviewed: bool = False) -> int:
        """Start a caption run over the images without a caption under these settings; returns the run id (see /run).

        Captions a person approved or edited stay current unless overwrite_reviewed."""
        return start_captioning(ctx, api_key, base_url, model, concurrency, kept_only, who(request), overwrite_reviewed)

    def caption_queue_api(request: gr.Request, status: str = "any", flag: str = "any flag", person: str = "") -> dict:
        """Current captions for review, filtered by status, flag and person."""
        rows, total = queue_data(ctx, status, flag, person, limit=500)
        return {"total": total, "captions": [{k: r[k] for k in ("image_id", "person", "version", "status", "flags",
                                                                 "text", "author", "created_at")} for r in rows]}

    def caption_action_api(request: gr.Request, image_id: int, action: str, version: int | None = None, text: str = "",
                           api_key: str = "", base_url: str = "", model: str = "gpt-4o") -> dict:
        """approve | reject | edit (with text) the caption `version` you reviewed, or regenerate one image's caption.

        A version that is no longer current is refused; returns the new current version."""
        cur = act(ctx, image_id, version, action, text, who(request), api_key, base_url, model, 1)
        return {k: cur[k] for k in ("image_id", "version", "status", "text", "flags", "author", "created_at")}

    def caption_history_api(request: gr.Request, image_id: int) -> list:
        """Every caption version of one image, oldest first, with who and when."""
        return [{k: h[k] for k in ("version", "status", "origin", "text", "flags", "author", "created_at", "model")}
                for h in ctx.ws.store.caption_history(parse_id(image_id))]

    def bulk_approve_api(request: gr.Request) -> int:
        """Approve every unflagged current caption; returns how many."""
        return review.bulk_approve_unflagged(ctx.ws, who(request))

    w.api(caption_run_api, "caption_run")
    w.api(caption_queue_api, "caption_queue")
    w.api(caption_action_api, "caption_action")
    w.api(caption_history_api, "caption_history")
    w.api(bulk_approve_api, "caption_bulk_approve")
    return refresh
