"""Annotate tab: annotators score generated images blind; admins create studies and read the results.

An annotator sees one item at a time: the input face, the generated image and the prompt, three
0-5 scales with their definitions, a comment box, and their progress; nothing else reaches their
browser: no model name, no file name (images are served under hashed names granted to them only),
no seed, no other annotator's score. Every change of a scale is saved at once (closing the page
loses nothing) and the next visit resumes at the first unfinished item. Keys: 0-5 score the
highlighted scale and move to the next, Tab / Shift+Tab move between scales, Enter saves and shows
the next item, Backspace goes back.

Saves are handled outside Gradio's queue (``queue=False``): an annotator's click never waits
behind someone else's generation or evaluation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ..human import studies as he
from ..human.design import EXAMPLE_PROMPTS, StudySettings, read_prompts
from ..models.generate import registered_models
from ..runs import jobs as runs
from ..codes import CRITERIA, SCALES, StudyStatus
from .access import StudioContext, role, username
from .pages import PageMemory, session_of
from ..validate import plural
from .wiring import Wiring

STUDIES = ["name", "status", "items", "annotators", "done", "assigned", "per_item", "source", "created_by"]

#: the page's keys (written from ``codes.SCALES``: the criteria in order, a digit scores the highlighted one)
KEYBOARD_JS = """
<script>
(() => {
  const crit = __CRITERIA__;
  let cur = 0;
  const visible = () => { const v = document.getElementById("annotate-view"); return v && v.offsetParent !== null; };
  const mark = () => crit.forEach((c, i) => {
    const el = document.getElementById("scale-" + c);
    if (el) el.classList.toggle("scale-active", i === cur);
  });
  document.addEventListener("keydown", (e) => {
    if (!visible() || e.altKey || e.metaKey || e.ctrlKey) return;
    const t = e.target, tag = (t.tagName || "").toLowerCase();
    if (tag === "textarea" || (tag === "input" && t.type !== "radio")) return;  // typing a comment
    if (/^[0-9]$/.test(e.key)) {  // a digit outside the highlighted scale finds no input
      const input = document.querySelector(`#scale-${crit[cur]} input[value="${e.key}"]`);
      if (input) { input.click(); cur = Math.min(cur + 1, crit.length - 1); mark(); e.preventDefault(); }
    } else if (e.key === "Tab") {
      cur = (cur + (e.shiftKey ? crit.length - 1 : 1)) % crit.length; mark(); e.preventDefault();
    } else if (e.key === "Enter") {
      document.querySelector("#annotate-save")?.click(); cur = 0; mark(); e.preventDefault();
    } else if (e.key === "Backspace") {
      document.querySelector("#annotate-back")?.click(); cur = 0; mark(); e.preventDefault();
    }
  });
  new MutationObserver(mark).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>
""".replace("__CRITERIA__", json.dumps(list(CRITERIA)))
#: the scale the digits go to stands out (an outline alone read as a thin line); a small generated image fills its box
CSS = """
.scale-active { box-shadow: 0 0 0 3px var(--color-accent, #f97316) !important; border-radius: 8px;
                background: color-mix(in srgb, var(--color-accent, #f97316) 14%, transparent) !important; }
#annotate-face img, #annotate-image img { width: 100%; height: 100%; object-fit: contain; }
"""


@dataclass
class AnnotateTab:
    tab: gr.Tab
    info: gr.Markdown
    view: gr.Column
    study: gr.Dropdown
    progress: gr.Markdown
    instructions: gr.Markdown
    face: gr.Image
    image: gr.Image
    prompt: gr.Markdown
    scales: dict
    comment: gr.Textbox
    position: gr.Number
    back: gr.Button
    save: gr.Button
    admin: gr.Column
    create: dict
    create_btn: gr.Button
    design: dict
    design_btn: gr.Button
    studies: gr.Dataframe
    chosen: gr.Textbox
    open_btn: gr.Button
    close_btn: gr.Button
    export_btn: gr.Button
    results: gr.Markdown
    table3: gr.Dataframe
    annotators: gr.Dataframe
    chart: gr.BarPlot
    files: gr.File


def build() -> AnnotateTab:
    with gr.Tab("Annotate", id="annotate", visible=False) as tab:
        info = gr.Markdown()
        with gr.Column(elem_id="annotate-view") as view:
            with gr.Row():
                study = gr.Dropdown([], label="Study", elem_id="annotate-study", scale=2)
                progress = gr.Markdown(elem_id="annotate-progress")
            instructions = gr.Markdown(elem_id="annotate-instructions")
            with gr.Row():
                face = gr.Image(label="Input face", interactive=False, height=360, elem_id="annotate-face")
                image = gr.Image(label="Generated image", interactive=False, height=360, elem_id="annotate-image")
            prompt = gr.Markdown(elem_id="annotate-prompt")
            scales = {c.name: gr.Radio(c.scale, label=c.name.capitalize(), info=c.definition, elem_id=f"scale-{c.name}")
                      for c in SCALES}
            comment = gr.Textbox(label="Comment (optional)", lines=1, elem_id="annotate-comment")
            with gr.Row():
                position = gr.Number(label="Item", precision=0, interactive=False, elem_id="annotate-position")
                back = gr.Button("← Back", elem_id="annotate-back")
                save = gr.Button("Save and next →", variant="primary", elem_id="annotate-save")
        with gr.Column(visible=False) as admin:
            gr.Markdown("### Studies (admin)")
            with gr.Row():
                create = {"name": gr.Textbox(label="Study name", elem_id="study-name"),
                          "source": gr.Radio(["evaluation run", "generation batch", "all generations"],
                                             value="evaluation run", label="Samples from"),
                          "source_value": gr.Textbox(label="Run id or batch", elem_id="study-source"),
                          "annotators": gr.Textbox(label="Annotators (comma-separated user names)",
                                                   elem_id="study-annotators"),
                          "per_item": gr.Number(0, label="Annotators per item (0: all)", precision=0,
                                                info="the paper: every participant scored everything"),
                          "duplicates": gr.Number(0, label="Duplicate items", precision=0),
                          "seed": gr.Number(0, label="Seed", precision=0)}
            create_btn = gr.Button("Create study (draft)", elem_id="study-create")
            with gr.Accordion("Design a study: faces × prompts × models (generated as a run, no CLIP needed)",
                              open=False, elem_id="design"):
                with gr.Row():
                    design = {"name": gr.Textbox(label="Study name", elem_id="design-name"),
                              "faces": gr.Dropdown([], label="Faces: a test set's input faces", elem_id="design-faces"),
                              "models": gr.CheckboxGroup([], label="Models", elem_id="design-models"),
                              "annotators": gr.Textbox(label="Annotators (comma-separated user names)",
                                                       elem_id="design-annotators")}
                design["prompts"] = gr.Textbox(example_prompts(), lines=8, elem_id="design-prompts",
                                               label="Prompts, one per line (an example list in the spirit of the "
                                                     "paper's: other expressions, angles and attire)")
                d = StudySettings(action="generate", name="", faces="", prompts=[], models=[], annotators=[])
                with gr.Row():
                    design["ip_scale"] = gr.Number(d.ip_scale, label="λ (ID weight)")
                    design["steps"] = gr.Number(d.steps, label="Steps", precision=0, elem_id="design-steps")
                    design["width"] = gr.Number(d.width, label="Width", precision=0, elem_id="design-width")
                    design["height"] = gr.Number(d.height, label="Height", precision=0, elem_id="design-height")
                    design["per_item"] = gr.Number(0, label="Annotators per item (0: all)", precision=0)
                    design["duplicates"] = gr.Number(0, label="Duplicate items", precision=0)
                    design["device"] = gr.Textbox("", label="Device (empty: cuda when available)",
                                                  elem_id="design-device")
                design_btn = gr.Button("Generate the study", elem_id="design-start")
            studies = gr.Dataframe(headers=STUDIES, label="Studies (click one for its results)", interactive=False,
                                   elem_id="study-list")
            with gr.Row():
                chosen = gr.Textbox(label="Study", elem_id="study-chosen")
                open_btn = gr.Button("Open")
                close_btn = gr.Button("Close")
                export_btn = gr.Button("Export (CSV, Label Studio, Table 3)")
            results = gr.Markdown(elem_id="study-results")
            table3 = gr.Dataframe(label="Table 3 per model and criterion (scores 0-5)", interactive=False,
                                  visible=False, elem_id="study-table3")
            annotators = gr.Dataframe(label="Annotators: items done and partly scored, means, median seconds per item, "
                                            "duplicate consistency", interactive=False, visible=False,
                                      elem_id="study-annotators-table")
            chart = gr.BarPlot(x="model_criterion", y="avg", title="Average score per model and criterion",
                               y_lim=[0, 5], height=260, visible=False, elem_id="study-chart")
            files = gr.File(label="Exports", file_count="multiple", interactive=False, visible=False)
    return AnnotateTab(tab, info, view, study, progress, instructions, face, image, prompt, scales, comment, position,
                       back, save, admin, create, create_btn, design, design_btn, studies, chosen, open_btn, close_btn, export_btn, results,
                       table3, annotators, chart, files)


# -- views -----------------------------------------------------------------------------------------

def _who(ctx: StudioContext, request) -> str:
    user = username(ctx, request)
    if role(ctx, request) is None:
        raise gr.Error("Access denied: sign in to annotate.", print_exception=False)
    return user or "local admin"


def _served(ctx: StudioContext, user: str, rel: str) -> str | None:
    """A metadata-free copy of an item's photo, granted to this annotator only."""
    try:
        path = ctx.media.clean(rel)
    except Exception:  # not a readable image: that item shows without it, the page goes on
        return None
    if path:
        ctx.grants.grant(user, path)
    return path


def item_payload(ctx: StudioContext, user: str, study_id: int, position=None, after=None) -> dict:
    """What an annotator may see of their item (no model, no file names)."""
    it = he.item_for(ctx.ws, study_id, user, position, after)
    return {k: it[k] for k in ("position", "total", "done", "finished", "prompt", "scores", "comment", "missing")} | {
        "_face": it["face_path"], "_image": it["image_path"]}


def item_outputs(ctx: StudioContext, user: str, study: dict, position=None, after=None) -> tuple:
    p = item_payload(ctx, user, study["id"], position, after)
    text = f"**{p['done']} / {p['total']} done** · item {p['position']}"
    if p["finished"]:
        text += " · all items scored: thank you! You can still go back and change a score."
    if p["missing"]:
        text += " · this item's image is missing: skip it (the study's admin is told by the results)"
    return (p["position"], text, study["instructions"], _served(ctx, user, p["_face"]), _served(ctx, user, p["_image"]),
            f"**Prompt:** {p['prompt']}", *(gr.Radio(value=None if p["scores"].get(c) is None else str(p["scores"][c]))
                                            for c in CRITERIA), p["comment"])


def study_choices(ctx: StudioContext, user: str) -> list[str]:
    return [s["name"] for s in ctx.ws.store.annotator_studies(user)]


def studies_frame(ctx: StudioContext) -> pd.DataFrame:
    return pd.DataFrame([[s[k] for k in STUDIES] for s in ctx.ws.store.studies()], columns=STUDIES)


def results_view(ctx: StudioContext, name: str) -> tuple:
    """(summary, Table 3, annotators, chart) of a study; the tables and chart stay hidden until a score exists."""
    res = he.results(ctx.ws, name)
    st = res["study"]
    text = (f"Study **{st['name']}** ({st['status']}): {plural(st['items'], 'item')}, "
            f"{plural(st['annotators'], 'annotator')}, {st['done'] or 0} of {st['assigned']} assignments done "
            f"(every criterion scored), {plural(res['scores'], 'score')}.")
    if not res["scores"]:
        text += " Nothing is scored yet: the results appear here as annotators save."
        hidden = gr.update(visible=False)
        return text, hidden, hidden, hidden
    text += f" {he.alpha_text(res)}."
    t3 = pd.DataFrame(res["table3"], columns=["model", "criterion", "min", "max", "avg", "std", "n"])
    chart = t3.assign(model_criterion=t3["model"] + " · " + t3["criterion"])[["model_criterion", "avg"]]
    return (text, gr.update(value=t3.round(2), visible=True), gr.update(value=pd.DataFrame(res["annotators"]).round(2),
                                                                       visible=True),
            gr.update(value=chart, visible=True))


def latest_study(ctx: StudioContext) -> str | None:
    """The study an admin most likely wants to see: the newest open one, else the newest."""
    studies = ctx.ws.store.studies()
    open_ = [s for s in studies if s["status"] == StudyStatus.OPEN]
    return (open_ or studies or [{"name": None}])[-1]["name"]


def example_prompts() -> str:
    return "\n".join(read_prompts(EXAMPLE_PROMPTS)) if EXAMPLE_PROMPTS.is_file() else ""


def design_from_form(values: dict) -> StudySettings:
    """The design form's study (checked here, so a mistake is a warning that keeps the form)."""
    return StudySettings.from_dict({
        "action": "generate", "name": (values.get("name") or "").strip(), "faces": values.get("faces") or "",
        "prompts": [p.strip() for p in (values.get("prompts") or "").splitlines() if p.strip()],
        "models": list(values.get("models") or []),
        "annotators": [a.strip() for a in (values.get("annotators") or "").split(",") if a.strip()],
        "ip_scale": float(values.get("ip_scale") or 0), "steps": int(values.get("steps") or 0),
        "width": int(values.get("width") or 0), "height": int(values.get("height") or 0),
        "per_item": int(values.get("per_item") or 0), "duplicates": int(values.get("duplicates") or 0),
        "device": (values.get("device") or "").strip() or None})


def wire(ctx: StudioContext, t: AnnotateTab, demo: gr.Blocks) -> None:
    w = Wiring(ctx)
    item_out = [t.position, t.progress, t.instructions, t.face, t.image, t.prompt, *t.scales.values(), t.comment]
    n_item = len(item_out)
    skip_item = tuple(gr.skip() for _ in range(n_item))
    # Page load and the tab's select event both fill the view, and on a page that opens on this tab both
    # fire at once: the later reply, computed before the annotator's first key was saved, blanked the
    # scales (and the comment) they had just set. So a page is filled once per item it shows.
    shown = PageMemory()

    def showing(request: gr.Request, name: str, item: tuple) -> tuple:
        shown.changed(session_of(request), "item", (name, item[0]))
        return item

    def on_load(request: gr.Request):
        r = role(ctx, request)
        if r is None:
            return (gr.Column(visible=False), gr.Column(visible=False), gr.skip(), gr.skip(), *skip_item)
        user = username(ctx, request) or "local admin"
        names = study_choices(ctx, user)
        info = (f"Signed in as **{user}**. " if username(ctx, request) else "") + (
            "" if names else "No open human-evaluation study is assigned to you yet.")
        first = item_outputs(ctx, user, he.annotator_study(ctx.ws, names[0], user)) if names else skip_item
        if names and not shown.changed(session_of(request), "item", (names[0], first[0])):
            first = skip_item  # this page shows that item already: keep what the annotator has set on it
        return (gr.Column(visible=bool(names)), gr.Column(visible=r == "admin"), info,
                gr.Dropdown(choices=names, value=names[0] if names else None), *first)

    load_out = [t.view, t.admin, t.info, t.study, *item_out]
    w.on(demo.load, on_load, None, load_out, queue=False, role=None)
    w.on(t.tab.select, on_load, None, load_out, queue=False, role=None)

    def on_study(request: gr.Request, name):
        user = _who(ctx, request)
        if not name:
            return skip_item
        return showing(request, name, item_outputs(ctx, user, he.annotator_study(ctx.ws, name, user)))

    w.on(t.study.input, on_study, [t.study], item_out, queue=False, role=None)

    def scale_saver(criterion: str):
        def on_scale(request: gr.Request, name, position, value):
            user = _who(ctx, request)
            if not name or position in (None, 0) or value in (None, ""):
                return gr.skip()
            study = he.annotator_study(ctx.ws, name, user)
            he.save(ctx.ws, study["id"], user, position, {criterion: value})
            done, total, _ = ctx.ws.store.annotator_progress(study["id"], user)
            return f"**{done} / {total} done** · item {int(position)} · saved"
        return on_scale

    for c, radio in t.scales.items():
        w.on(radio.input, scale_saver(c), [t.study, t.position, radio], [t.progress], queue=False, role=None)

    def on_save(request: gr.Request, name, position, comment, *values):
        user = _who(ctx, request)
        if not name:
            raise ValueError("choose a study first")
        study = he.annotator_study(ctx.ws, name, user)
        scores = {c: v for c, v in zip(CRITERIA, values) if v not in (None, "")}
        if scores or comment:
            he.save(ctx.ws, study["id"], user, position, scores, comment or None)
        return showing(request, name, item_outputs(ctx, user, study, after=int(position or 0)))

    w.on(t.save.click, on_save, [t.study, t.position, t.comment, *t.scales.values()], item_out, queue=False, role=None)

    def on_back(request: gr.Request, name, position):
        user = _who(ctx, request)
        if not name:
            return skip_item
        study = he.annotator_study(ctx.ws, name, user)
        return showing(request, name, item_outputs(ctx, user, study, max(1, int(position or 1) - 1)))

    w.on(t.back.click, on_back, [t.study, t.position], item_out, queue=False, role=None)

    # -- admin: create, open / close, results, export --------------------------------------------
    def on_create(request: gr.Request, name, source, value, annotators, per_item, duplicates, seed):
        value = (value or "").strip()
        if source == "evaluation run":
            if not value.isdigit():
                raise ValueError("give the evaluation run's id")
            samples = he.samples_from_generations(ctx.ws, eval_run=int(value))
        elif source == "generation batch":
            if not value:
                raise ValueError("give the generation batch")
            samples = he.samples_from_generations(ctx.ws, batch=value)
        else:
            samples = he.samples_from_generations(ctx.ws)
        made = he.create_study(ctx.ws, name, samples, (annotators or "").split(","), per_item=int(per_item or 0),
                               duplicates=int(duplicates or 0), seed=int(seed or 0),
                               source=f"{source} {value}".strip(), created_by=username(ctx, request) or "local admin")
        gr.Info(f"Study {made['name']!r} created with {made['items']} items (draft): open it to start annotation.")
        return studies_frame(ctx), made["name"]

    w.on(t.create_btn.click, on_create, list(t.create.values()), [t.studies, t.chosen])

    def status_setter(status: str):
        def on_status(request: gr.Request, name):
            he.set_status(ctx.ws, (name or "").strip(), status)
            return (studies_frame(ctx), *results_view(ctx, name.strip()))
        return on_status

    admin_results = [t.results, t.table3, t.annotators, t.chart]
    w.on(t.open_btn.click, status_setter(StudyStatus.OPEN), [t.chosen], [t.studies, *admin_results])
    w.on(t.close_btn.click, status_setter(StudyStatus.CLOSED), [t.chosen], [t.studies, *admin_results])

    def on_pick(request: gr.Request, frame: pd.DataFrame, evt: gr.SelectData):
        name = str(frame.iloc[evt.index[0]]["name"])
        return (name, *results_view(ctx, name))

    w.on(t.studies.select, on_pick, [t.studies], [t.chosen, *admin_results])

    def on_export(request: gr.Request, name):
        files = he.export(ctx.ws, (name or "").strip())
        return gr.update(value=[p for p in (ctx.media.download(v) for v in files.values()) if p], visible=True)

    w.on(t.export_btn.click, on_export, [t.chosen], [t.files])

    design_keys = list(t.design)

    def on_design(request: gr.Request, *values):
        run = runs.submit(ctx.ws, design_from_form(dict(zip(design_keys, values))),
                          username(ctx, request) or "local admin")
        gr.Info(f"Generating the study as run {run} (Runs tab); it appears in this list when done, as a draft.")
        return studies_frame(ctx)

    w.on(t.design_btn.click, on_design, list(t.design.values()), [t.studies])

    def admin_load(request: gr.Request):
        models = list(registered_models(ctx.ws))
        name = latest_study(ctx)
        shown_results = results_view(ctx, name) if name else (gr.skip(),) * len(admin_results)
        return (studies_frame(ctx), gr.Dropdown(choices=[x["name"] for x in ctx.ws.store.testsets()]),
                gr.CheckboxGroup(choices=models), name or gr.skip(), *shown_results)

    admin_out = [t.studies, t.design["faces"], t.design["models"], t.chosen, *admin_results]
    w.on(demo.load, admin_load, None, admin_out, quiet=True)  # an annotator's page: nothing, silently
    w.on(t.tab.select, admin_load, None, admin_out, quiet=True)  # back from the Runs tab: the new study is listed

    # -- API: annotators (blind) and admins -------------------------------------------------------
    def annotate_studies_api(request: gr.Request) -> list[dict]:
        """Your open studies: name, done, total."""
        user = _who(ctx, request)
        return [{"name": s["name"], "done": int(s["done"] or 0), "total": s["total"]}
                for s in ctx.ws.store.annotator_studies(user)]

    def annotate_item_api(request: gr.Request, study: str, position: int | None = None) -> dict:
        """One of your items (the first unfinished one without a position): prompt, your scores, progress."""
        user = _who(ctx, request)
        s = he.annotator_study(ctx.ws, study, user)
        return {k: v for k, v in item_payload(ctx, user, s["id"], position).items() if not k.startswith("_")}

    def annotate_save_api(request: gr.Request, study: str, position: int, scores: dict,
                          comment: str | None = None) -> dict:
        """Save your scores (criterion -> 0-5) for your item at ``position``; returns your next item."""
        user = _who(ctx, request)
        s = he.annotator_study(ctx.ws, study, user)
        saved = he.save(ctx.ws, s["id"], user, position, scores, comment)
        item = {k: v for k, v in item_payload(ctx, user, s["id"], after=int(position)).items() if not k.startswith("_")}
        return {"saved": saved, "next": item}

    def study_results_api(request: gr.Request, study: str) -> dict:
        """A study's Table 3, Krippendorff's alpha per criterion and per-annotator summary (admin)."""
        return he.results(ctx.ws, study)

    def study_status_api(request: gr.Request, study: str, status: str) -> dict:
        """Open or close a study (admin)."""
        return he.set_status(ctx.ws, study, status)

    w.api(annotate_studies_api, "annotate_studies", queue=False, role=None)
    w.api(annotate_item_api, "annotate_item", queue=False, role=None)
    w.api(annotate_save_api, "annotate_save", queue=False, role=None)
    w.api(study_results_api, "study_results")
    w.api(study_status_api, "study_status")

