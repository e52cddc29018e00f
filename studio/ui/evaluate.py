"""Evaluate tab (admin): test sets, and evaluation runs that give the paper's Table 2 and the λ trade-off.

Building a test set and evaluating are runs (`python -m studio testset|evaluate ...` in a worker),
so they go on when the page closes, show in the Runs tab and resume on rerun. This tab follows the
latest or a chosen evaluation run: its table, the trade-off curve and its CSV / Markdown files.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ..runs import jobs as runs
from ..codes import RunStatus
from ..evaluation.evaluate import METRICS, EvalConfig, cell
from ..models.generate import parse_sweep, registered_models
from ..evaluation.metrics import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, SCORED_ATTRIBUTES
from ..runs.stages import TestsetSettings
from ..evaluation.testsets import KINDS, NEUTRAL_PROMPT, item_rows, keep_upload, summary
from ..validate import parse_id
from .access import StudioContext, username
from .pages import PageMemory, Refresh, session_of, shown_time
from . import run_panel
from .run_panel import RunPanel
from .wiring import Wiring

SETS = ["name", "kind", "fills", "items", "persons", "with_target_photo", "pack", "source", "created_at"]
SET_COLUMNS = [("created (UTC)" if k == "created_at" else k) for k in SETS]  # as the table shows them
HISTORY = ["id", "status", "progress", "test sets", "models", "λ", "author", "started (UTC)"]
IMPORT_HELP = """The zip holds a folder of text-image pairs: `0001.jpg` with its prompt in `0001.txt`, and
optionally `0001.input.jpg`, another photo of the same person that gives the input face (CrossFaceID-test's
shape; without it the face comes from the photo itself, as in Unsplash-50). A subfolder names the person.
A zip may instead hold one CSV / JSONL (`input`, `prompt`, `attribute`, `target`, `person`) with the photos
it names. From a shell: `python -m studio testset import --file FOLDER|ZIP|CSV --name N`."""
ITEMS = ["idx", "person", "prompt", "attribute", "input", "target"]
TABLE = ["test set", "model", "λ", "n", "CLIP-T", "CLIP-I", "Face Sim", "no face", "Attribute acc.", "Pose acc."]


@dataclass
class EvaluateTab:
    tab: gr.Tab
    build: dict
    build_btn: gr.Button
    upload: dict
    import_btn: gr.Button
    sets: gr.Dataframe
    items: gr.Dataframe
    form: dict
    start: gr.Button
    run_id: gr.Number
    cancel: gr.Button
    status: gr.Markdown
    table: gr.Dataframe
    details: gr.Dataframe
    curve: gr.LinePlot
    files: gr.File
    history: gr.Dataframe


def build() -> EvaluateTab:
    with gr.Tab("Evaluate", id="evaluate", visible=False) as tab:
        with gr.Accordion("1 · Test sets", open=True):
            with gr.Row():
                b = {"name": gr.Textbox(label="Name", elem_id="ts-name"),
                     "kind": gr.Radio(list(KINDS), value="customization", label="Kind", elem_id="ts-kind",
                                      info="customization: prompts asking for an attribute · fidelity: a neutral prompt"),
                     "persons": gr.Textbox(label="Persons (comma-separated; empty: the test split)", elem_id="ts-persons"),
                     "ask": gr.Textbox(label="Ask every face for (attributes)", elem_id="ts-ask",
                                       info=", ".join(SCORED_ATTRIBUTES)),
                     "prompt": gr.Textbox(NEUTRAL_PROMPT, label="Prompt (start)"),
                     "per_person": gr.Number(0, label="Items per person (0: all)", precision=0)}
            build_btn = gr.Button("Build test set", elem_id="ts-build")
            with gr.Row():
                up = {"file": gr.File(label="Import a zip of text-image pairs", file_types=[".zip"], type="filepath",
                                      elem_id="ts-zip"),
                      "name": gr.Textbox(label="Name of the imported set", elem_id="ts-import-name"),
                      "kind": gr.Radio(["auto", *KINDS], value="auto", label="Kind", elem_id="ts-import-kind",
                                       info="auto: customization when the pairs have input photos")}
                import_btn = gr.Button("Import", elem_id="ts-import")
            gr.Markdown(IMPORT_HELP)
            sets = gr.Dataframe(headers=SET_COLUMNS, label="Test sets (click one to list its items)", interactive=False,
                                elem_id="ts-list")
            items = gr.Dataframe(headers=ITEMS, label="Items", interactive=False, elem_id="ts-items")
        with gr.Accordion("2 · Evaluation run", open=True):
            d = EvalConfig(testsets=[], models=[])
            with gr.Row():
                f = {"testsets": gr.CheckboxGroup([], label="Test sets", elem_id="ev-sets"),
                     "models": gr.CheckboxGroup([], label="Models", elem_id="ev-models"),
                     "baseline": gr.Dropdown([], label="Baseline for Δ (empty: the first model)", allow_custom_value=True,
                                             elem_id="ev-baseline"),
                     "lambdas": gr.Textbox("0.4,0.8", label="λ values (comma-separated)", elem_id="ev-lambdas")}
            with gr.Row():
                f["steps"] = gr.Number(d.steps, label="Steps", precision=0, elem_id="ev-steps")
                f["guidance"] = gr.Number(d.guidance, label="Guidance")
                f["identitynet_scale"] = gr.Number(d.identitynet_scale, label="IdentityNet")
                f["width"] = gr.Number(d.width, label="Width", precision=0, elem_id="ev-width")
                f["height"] = gr.Number(d.height, label="Height", precision=0, elem_id="ev-height")
                f["seed"] = gr.Number(d.seed, label="Seed (+ item index)", precision=0)
            f["negative_prompt"] = gr.Textbox(d.negative_prompt, label="Negative prompt (Generate's default; recorded "
                                              "with every sample)", lines=2, elem_id="ev-negative")
            with gr.Row():
                f["clip_model"] = gr.Textbox(DEFAULT_CLIP_MODEL, label="CLIP model (name, hf-hub:REPO or folder)",
                                             elem_id="ev-clip")
                f["clip_pretrained"] = gr.Textbox(DEFAULT_CLIP_PRETRAINED, label="CLIP pretrained tag / file",
                                                  elem_id="ev-clip-pretrained")
                f["n_boot"] = gr.Number(d.n_boot, label="Bootstrap resamples", precision=0)
                f["device"] = gr.Textbox("", label="Device (empty: cuda when available)", elem_id="ev-device")
                f["allow_pack_mismatch"] = gr.Checkbox(
                    False, label="Allow a face pack other than the models' (recorded)", elem_id="ev-allow-pack")
            start = gr.Button("Start evaluation", variant="primary", elem_id="ev-start")
        with gr.Row():
            run_id = gr.Number(label="Evaluation run", precision=0, elem_id="ev-run")
            cancel = gr.Button("Cancel", variant="stop")
        status = gr.Markdown(elem_id="ev-status")
        table = gr.Dataframe(label="Table 2 as the paper lays it out (fine-tuned models: in brackets the gain over "
                                   "the model they started from; bold: the best of each column)",
                             interactive=False, wrap=True, elem_id="ev-table", datatype="markdown")
        with gr.Accordion("The studio's own measures: 95% intervals, Δ against the baseline, Face Sim on "
                          "customization sets, attribute and pose accuracy, samples without a face", open=False,
                          elem_id="ev-details-box"):
            details = gr.Dataframe(headers=TABLE, interactive=False, wrap=True, elem_id="ev-details",
                                   label="mean [95% bootstrap interval] (Δ to the baseline)")
        curve = gr.LinePlot(x="attribute_accuracy", y="face_sim", color="model", title="λ trade-off: Face Sim vs "
                            "accuracy on non-pose attributes (one point per λ)", elem_id="ev-curve", height=300, visible=False)
        files = gr.File(label="Files (CSV, Markdown)", file_count="multiple", interactive=False, elem_id="ev-files")
        history = gr.Dataframe(headers=HISTORY, label="Evaluation runs (newest first; click to open)", interactive=False)
    return EvaluateTab(tab, b, build_btn, up, import_btn, sets, items, f, start, run_id, cancel, status, table, details,
                       curve, files, history)


# -- views -----------------------------------------------------------------------------------------

def sets_frame(ctx: StudioContext) -> pd.DataFrame:
    rows = [summary(ctx.ws, t["name"]) for t in ctx.ws.store.testsets()]
    return pd.DataFrame([[shown_time(r[k]) if k == "created_at" else r[k] for k in SETS] for r in rows],
                        columns=SET_COLUMNS)


def history_frame(ctx: StudioContext) -> pd.DataFrame:
    runs.reap(ctx.ws)
    rows = []
    for r in ctx.ws.store.runs(kind="evaluate"):
        d, s = runs.describe(r), r["settings"] or {}
        rows.append([d["id"], d["status"], d["progress"], ", ".join(s.get("testsets", [])), ", ".join(s.get("models", [])),
                     ", ".join(f"{v:g}" for v in s.get("lambdas", [])), d["author"], shown_time(d["started"])])
    return pd.DataFrame(rows, columns=HISTORY)


def table_frame(result: dict) -> pd.DataFrame:
    rows = [[r["testset"], r["model"] + (" (baseline)" if r["model"] == result["baseline"] else ""), r["lambda"], r["n"],
             *(cell(r, m) for m in METRICS[:3]), f"{r['missing_faces']}/{r['n']}",
             cell(r, "attr_acc") if r["attr_acc_n"] else "–", cell(r, "pose_acc") if r.get("pose_acc_n") else "–"]
            for r in result["table"]]
    return pd.DataFrame(rows, columns=TABLE)


def paper_frame(result: dict) -> pd.DataFrame:
    """Table 2 in the paper's compact layout (what ``table2.md`` holds), best values in bold."""
    from ..evaluation import tables

    t = tables.table2(result["table"], result.get("against"))
    heads = ["model"] + [f"{g} {c}" for g, cols in t.groups for c in cols]
    return pd.DataFrame([[label] + [f"**{c.text()}**" if c.best else c.text() for c in cells] for label, cells in t.rows],
                        columns=heads)


def run_view(ctx: StudioContext, run_id) -> tuple:
    """(status, paper table, the studio's own table, curve, files) of one evaluation run."""
    empty = (pd.DataFrame(columns=["model"]), pd.DataFrame(columns=TABLE), gr.LinePlot(visible=False), None)
    if run_id in (None, "", 0):
        return ("Build a test set, then start an evaluation (or open one from the history).", *empty)
    r = ctx.ws.store.run(parse_id(run_id, "run id"))
    if r is None or r["kind"] != "evaluate":
        return (f"No evaluation run {run_id}.", *empty)
    d = runs.describe(r)
    text = [f"### Run {d['id']} · **{d['status']}** · {d['progress']} · by {d['author']}"]
    if d["error"]:
        text.append(f"**Error:** {d['error']}")
    res = r["result"]
    if not res:
        if d["status"] in (RunStatus.FAILED, RunStatus.CANCELLED):
            text.append("Rerun it in the Runs tab: finished samples and scores are reused.")
        return ("\n\n".join(text), *empty)
    text.append(f"{res['samples']} samples ({res['generated']} generated, {res['reused']} reused) · scored with "
                f"`{res['scorer']}` · CLIP-T, CLIP-I and Face Sim are cosines · baseline for Δ: "
                f"{res['baseline']} · samples without a face: "
                + (", ".join(f"{m}: {n}" for m, n in res["missing_faces"].items()) or "none"))
    curve = pd.DataFrame([p for p in res["tradeoff"] if p["face_sim"] is not None],
                         columns=["model", "lambda", "attribute_accuracy", "face_sim"])
    if res["tradeoff"] and curve.empty:
        text.append("No trade-off curve: no generated sample had a face to compare.")
    files = [p for p in (ctx.media.download(v) for v in res["files"].values()) if p]
    return "\n\n".join(text), paper_frame(res), table_frame(res), gr.LinePlot(curve, visible=not curve.empty), files


def _persons(text: str) -> list[str] | None:
    names = [p.strip() for p in (text or "").split(",") if p.strip()]
    return names or None


def testset_from_form(values: dict) -> TestsetSettings:
    """The Build form's test set (checked here so a mistake is a warning)."""
    name = (values.get("name") or "").strip()
    if not name:
        raise ValueError("give the test set a name")
    return TestsetSettings.from_dict({
        "action": "build", "name": name, "kind": values["kind"], "ask": values.get("ask") or "",
        "prompt": values.get("prompt") or NEUTRAL_PROMPT, "per_person": int(values.get("per_person") or 0),
        "person": _persons(values.get("persons"))})


def import_from_form(ctx: StudioContext, upload: str | None, name: str, kind: str) -> TestsetSettings:
    """An uploaded zip, kept in the workspace (the upload cache is emptied hourly; the run may wait in a queue)."""
    if not upload:
        raise ValueError("choose a zip of text-image pairs to import")
    if not (name or "").strip():
        raise ValueError("give the imported test set a name")
    return TestsetSettings.from_dict({"action": "import", "name": name.strip(), "file": str(keep_upload(ctx.ws, upload)),
                                      "kind": "" if kind in (None, "", "auto") else kind})


def config_from_form(values: dict) -> EvalConfig:
    models = list(values.get("models") or [])
    baseline = values.get("baseline") or None
    return EvalConfig.from_dict({
        "testsets": list(values.get("testsets") or []), "models": models,
        "lambdas": parse_sweep(str(values.get("lambdas") or "")),
        "baseline": baseline if baseline in models else None,  # one left over from an earlier choice: the first model
        "steps": int(values.get("steps") or 0), "guidance": float(values.get("guidance") or 0),
        "identitynet_scale": float(values.get("identitynet_scale") or 0), "width": int(values.get("width") or 0),
        "height": int(values.get("height") or 0), "seed": int(values.get("seed") or 0),
        "negative_prompt": str(values.get("negative_prompt") or ""),
        "clip_model": (values.get("clip_model") or DEFAULT_CLIP_MODEL).strip(),
        "clip_pretrained": (values.get("clip_pretrained") or "").strip() or None,
        "n_boot": int(values.get("n_boot") or 0), "device": (values.get("device") or "").strip() or None,
        "allow_pack_mismatch": bool(values.get("allow_pack_mismatch"))})


def wire(ctx: StudioContext, t: EvaluateTab) -> Refresh:
    """Returns the tab's part of the page's refresh clock: the run shown, the history, the test sets."""
    w = Wiring(ctx)
    build_keys, form_keys = list(t.build), list(t.form)

    def who(request) -> str:
        return username(ctx, request) or "local admin"

    def choices():
        names = [s["name"] for s in ctx.ws.store.testsets()]
        models = list(registered_models(ctx.ws))
        return gr.CheckboxGroup(choices=names), gr.CheckboxGroup(choices=models), gr.Dropdown(choices=models)

    def on_open(request: gr.Request):
        return (sets_frame(ctx), *choices(), history_frame(ctx))

    w.on(t.tab.select, on_open, None, [t.sets, t.form["testsets"], t.form["models"], t.form["baseline"], t.history])

    def on_build(request: gr.Request, *values):
        run = runs.submit(ctx.ws, testset_from_form(dict(zip(build_keys, values))), who(request))
        gr.Info(f"Building the test set as run {run}; it appears in the list when done.")
        return (sets_frame(ctx), *choices()[:1], gr.skip(), gr.skip())

    w.on(t.build_btn.click, on_build, list(t.build.values()), [t.sets, t.form["testsets"], t.items, t.history])

    def on_import(request: gr.Request, upload, name, kind):
        run = runs.submit(ctx.ws, import_from_form(ctx, upload, name, kind), who(request))
        gr.Info(f"Importing the test set as run {run}; it appears in the list when done.")
        return sets_frame(ctx), history_frame(ctx)

    w.on(t.import_btn.click, on_import, list(t.upload.values()), [t.sets, t.history])

    def on_set(request: gr.Request, frame: pd.DataFrame, evt: gr.SelectData):
        return pd.DataFrame(item_rows(ctx.ws, str(frame.iloc[evt.index[0]]["name"])), columns=ITEMS)

    w.on(t.sets.select, on_set, [t.sets], [t.items])

    def on_start(request: gr.Request, *values):
        run_id = runs.submit(ctx.ws, config_from_form(dict(zip(form_keys, values))), who(request))
        return (run_id, *run_view(ctx, run_id), history_frame(ctx))

    view = [t.status, t.table, t.details, t.curve, t.files]
    w.on(t.start.click, on_start, list(t.form.values()), [t.run_id, *view, t.history])

    shown = PageMemory()  # per page: the (run, status, progress, test sets) its view shows

    def on_refresh(request: gr.Request, run_id):
        r = ctx.ws.store.run(int(run_id)) if run_id not in (None, "", 0) else None
        sets = [s["name"] for s in ctx.ws.store.testsets()]
        # a test set built by its own run changes the list too, whatever the evaluation run shown
        key = (run_id, r["status"] if r else None, r["done"] if r else None, tuple(sets))
        if not shown.changed(session_of(request), "view", key):  # nothing changed: keep the page as it is
            return tuple(gr.skip() for _ in refresh_out)
        names = gr.CheckboxGroup(choices=sets)
        return (*run_view(ctx, run_id), history_frame(ctx), sets_frame(ctx), names)

    refresh_out = [*view, t.history, t.sets, t.form["testsets"]]
    w.on(t.run_id.submit, on_refresh, [t.run_id], refresh_out, quiet=True)

    run_panel.wire(w, ctx, RunPanel(t.run_id, t.cancel, t.history), lambda run_id: run_view(ctx, run_id), view,
                   stopping="Run {run_id} stops after its current sample; rerun it to go on.")

    def testsets_api(request: gr.Request) -> list[dict]:
        """The workspace's test sets (name, kind, items, persons, pack, attributes asked)."""
        return [summary(ctx.ws, s["name"]) for s in ctx.ws.store.testsets()]

    def eval_start_api(request: gr.Request, config: dict) -> int:
        """Start an evaluation run from EvalConfig fields (testsets, models, lambdas, ...); returns the run id."""
        return runs.submit(ctx.ws, EvalConfig.from_dict(config), who(request))

    def eval_status_api(request: gr.Request, run_id: int) -> dict:
        """An evaluation run: status, Table 2 rows, trade-off points, output files (workspace paths)."""
        runs.reap(ctx.ws)
        r = ctx.ws.store.run(parse_id(run_id, "run id"))
        if r is None or r["kind"] != "evaluate":
            raise ValueError(f"no evaluation run {run_id}")
        return {**runs.describe(r), "log": runs.log_tail(ctx.ws, r["id"])}

    w.api(testsets_api, "testsets")
    w.api(eval_start_api, "eval_start")
    w.api(eval_status_api, "eval_status")
    return Refresh(w.guard(on_refresh, refresh_out, quiet=True), [t.run_id], refresh_out)
