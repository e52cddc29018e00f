"""Training tab (admin): person splits, cross-training pairs, and InstantID fine-tuning runs.

Every button starts a run through the runs layer (`python -m studio split|pairs|train ...` in its
own process), so history, log, cancel and provenance are the Runs tab's too. A training run's
worker starts `accelerate launch`; this tab follows its metrics (loss plot, validation images),
and Stop asks it to checkpoint and exit. Finished runs become Generate-tab models.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from ..runs import jobs as runs
from ..train import launch as training
from ..codes import RunStatus
from ..train.pairs import STRATEGIES, pair_statistics
from ..runs.stages import PairsSettings, SplitSettings
from ..validate import parse_id
from .access import StudioContext, username
from .pages import PageMemory, Refresh, session_of, shown_time
from . import run_panel
from .run_panel import RunPanel
from .wiring import Wiring

HISTORY = ["id", "status", "progress", "model", "author", "started (UTC)", "ended (UTC)", "exit_code"]
#: why pairs were not made (``make_pairs``' excluded_by), in words
EXCLUDED_BY = {"phash": "whole-photo hash", "face_phash": "face-box hash", "face": "face cosine"}


@dataclass
class TrainingTab:
    tab: gr.Tab
    gpus: gr.Markdown
    shares: gr.Textbox
    split_seed: gr.Number
    split_btn: gr.Button
    strategy: gr.Dropdown
    per_image: gr.Number
    pair_split: gr.Dropdown
    pairs_btn: gr.Button
    data_summary: gr.Markdown
    form: dict
    start: gr.Button
    run_id: gr.Number
    status: gr.Markdown
    loss: gr.LinePlot
    validation: gr.Gallery
    log: gr.Textbox
    stop: gr.Button
    history: gr.Dataframe


def build() -> TrainingTab:
    with gr.Tab("Training", id="training", visible=False) as tab:
        gpus = gr.Markdown(elem_id="train-gpus")
        with gr.Accordion("1 · Person splits and cross-training pairs", open=True):
            with gr.Row():
                shares = gr.Textbox("0.8,0.1,0.1", label="Shares of persons: train,validation,test")
                split_seed = gr.Number(0, label="Seed", precision=0)
                split_btn = gr.Button("Split persons")
            with gr.Row():
                strategy = gr.Dropdown(list(STRATEGIES), value="random", label="Pairing",
                                       info="; ".join(f"{k}: {v}" for k, v in STRATEGIES.items()))
                per_image = gr.Number(1, label="Faces j per target i", precision=0)
                pair_split = gr.Dropdown(["train", "validation"], value="train", label="Pairs for split")
                pairs_btn = gr.Button("Make pairs")
            data_summary = gr.Markdown(elem_id="train-data")
        with gr.Accordion("2 · Fine-tune InstantID", open=True):
            d = training.TrainConfig(name="x")
            with gr.Row():
                form = {
                    "name": gr.Textbox(label="Name of the new model", elem_id="train-name"),
                    "model": gr.Dropdown([], label="Starting model", allow_custom_value=True, elem_id="train-model"),
                    "start": gr.Radio(["model", "base"], value=d.start, label="Start from",
                                      info="model: its IdentityNet + adapter · base: fresh adapter"),
                }
            with gr.Row():
                form["learning_rate"] = gr.Number(d.learning_rate, label="Learning rate")
                form["max_steps"] = gr.Number(d.max_steps, label="Steps", precision=0, elem_id="train-steps")
                form["batch_size"] = gr.Number(d.batch_size, label="Batch per GPU", precision=0)
                form["resolution"] = gr.Number(d.resolution, label="Resolution", precision=0, elem_id="train-res")
            with gr.Row():
                form["precision"] = gr.Radio(list(training.PRECISIONS), value=d.precision, label="Mixed precision",
                                             elem_id="train-precision")
                form["devices"] = gr.Textbox(d.devices, label="Devices (all, cpu, or GPU indices 0,1)",
                                             elem_id="train-devices")
                form["accelerate_config"] = gr.Dropdown(["(none)", *training.accelerate_configs()], value="(none)",
                                                        label="accelerate config")
            with gr.Row():
                form["recipe"] = gr.Dropdown(["(none)", *training.recipes()], value="(none)", elem_id="train-recipe",
                                             label="Recipe (sets lr, batch, resolution, precision, crop, epochs)",
                                             info="crossfaceid: the paper's recipe, made for 16 GPUs")
                form["crop"] = gr.Radio(list(training.CROPS), value=d.crop, label="Crop", elem_id="train-crop",
                                        info="random: the official trainer's (encoded in the loop)")
                form["epochs"] = gr.Number(d.epochs, label="Epochs (0: the steps decide)", precision=0,
                                           elem_id="train-epochs")
                form["face_candidates"] = gr.Checkbox(d.face_candidates, label="A random paired face per epoch")
                form["report_to"] = gr.Dropdown(list(training.TRACKERS), value=d.report_to, label="Track with",
                                                elem_id="train-report-to")
            with gr.Row():
                form["checkpoint_every"] = gr.Number(d.checkpoint_every, label="Checkpoint every", precision=0)
                form["validation_every"] = gr.Number(d.validation_every, label="Validation images every (0: none)",
                                                     precision=0, elem_id="train-val")
                form["missing_caption"] = gr.Radio(["skip", "template", "error"], value=d.missing_caption,
                                                   label="Target without an approved caption", elem_id="train-missing")
                form["manifest"] = gr.Textbox(label="Pair manifest (optional)", elem_id="train-manifest",
                                              placeholder="empty: the workspace's train pairs")
                form["extra"] = gr.Textbox(label="More script arguments", elem_id="train-extra",
                                           placeholder="e.g. --lr_warmup_steps 100 --drop_face 0.05")
            start = gr.Button("Start training", variant="primary", elem_id="train-start")
        with gr.Row():
            run_id = gr.Number(label="Training run", precision=0, elem_id="train-run")
            stop = gr.Button("Stop (checkpoint and exit)", variant="stop", elem_id="train-stop")
        status = gr.Markdown(elem_id="train-status")
        with gr.Row():
            loss = gr.LinePlot(x="step", y="loss", color="series", title="Training loss (and its moving average)",
                               elem_id="train-loss", height=260)
            validation = gr.Gallery(label="Validation images (latest step)", columns=4, height=260)
        log = gr.Textbox(label=f"Log (newest {LOG_LINES} lines; the whole log: Runs tab)", lines=LOG_LINES,
                         max_lines=LOG_LINES, autoscroll=True, elem_id="train-log")
        history = gr.Dataframe(headers=HISTORY, label="Training runs (newest first; click to open)", interactive=False)
    return TrainingTab(tab, gpus, shares, split_seed, split_btn, strategy, per_image, pair_split, pairs_btn, data_summary,
                       form,
                       start, run_id, status, loss, validation, log, stop, history)


# -- views -----------------------------------------------------------------------------------------

def gpus_note() -> str:
    found = training.gpus()
    if not found:
        d = training.CPU_DEFAULTS
        return (f"**GPUs:** none found, so the form is set for this machine's CPU (devices {d['devices']}, "
                f"precision {d['precision']} (fp32), {d['resolution']} px, batch {d['batch_size']}). "
                "**Only tiny models are practical on a CPU:** one step of SDXL takes minutes there. On a GPU "
                "machine the studio lists the GPUs here and sets the form for them.")
    return "**GPUs:** " + " · ".join(f"{g['index']}: {g['name']} ({g['memory_gb']:.0f} GB)" for g in found)


def data_summary(ctx: StudioContext) -> str:
    rows = ctx.ws.store.split_counts()
    table = "\n".join(f"| {r['split']} | {r['persons']} | {r['images']} | {r['kept']} |" for r in rows)
    out = f"| split | persons | images | kept |\n|---|---|---|---|\n{table}"
    stats = pair_statistics(ctx.ws, "train")
    n = sum(stats["pairs_per_person"].values())
    if n:
        out += (f"\n\n**Train pairs:** {n} over {stats['persons_paired']} persons · pose changes in "
                f"{stats['pose_change'].get('changes', 0)} · expression changes in "
                f"{stats['expression_change'].get('changes', 0)} (unknown without tags: "
                f"{stats['expression_change'].get('unknown', 0)})")
    last = ctx.ws.store.runs(kind="pairs", limit=1)
    if last and last[0]["result"]:
        res = last[0]["result"]
        why = ", ".join(f"{n} by {EXCLUDED_BY.get(k, k)}" for k, n in (res.get("excluded_by") or {}).items())
        out += (f"\n\nLast pairing (run {last[0]['id']}): {res.get('excluded_near_duplicates', 0)} near-duplicate pairs "
                f"excluded{f' ({why})' if why else ''}; persons left out: "
                + (", ".join(f"{p['person']} ({p['reason']})" for p in res.get("left_out_persons", [])) or "none"))
    return out


def history_frame(ctx: StudioContext) -> pd.DataFrame:
    runs.reap(ctx.ws)
    rows = []
    for r in ctx.ws.store.runs(kind="train"):
        d = runs.describe(r)
        rows.append([d["id"], d["status"], d["progress"], (r["settings"] or {}).get("name"), d["author"],
                     shown_time(d["started"]), shown_time(d["ended"]), d["exit_code"]])
    return pd.DataFrame(rows, columns=HISTORY)


def run_output(ctx: StudioContext, r: dict) -> Path:
    return training.output_dir(ctx.ws, (r["settings"] or {}).get("name", ""))


def metrics_view(ctx: StudioContext, run_id) -> tuple[str, pd.DataFrame, list, str]:
    """(status markdown, loss frame, validation images, log tail) of one training run."""
    empty = pd.DataFrame({"step": [], "loss": [], "series": []})
    if run_id in (None, "", 0):
        return "Start a training run, or open one from the history.", empty, [], ""
    r = ctx.ws.store.run(parse_id(run_id, "run id"))
    if r is None or r["kind"] != "train":
        return f"No training run {run_id}.", empty, [], ""
    out = run_output(ctx, r)
    rows = training.read_metrics(out)
    losses = [x for x in rows if "loss" in x]
    frame = loss_frame(losses)
    images = []
    shots = [x for x in rows if "validation" in x]
    if shots:
        for p in shots[-1]["validation"]:
            rel = Path(p).resolve().relative_to(ctx.ws.root.resolve()) if Path(p).is_absolute() else Path(p)
            served = ctx.media.file(str(rel))
            if served:
                images.append((served, f"step {shots[-1]['step']}"))
    d = runs.describe(r)
    step, total = (losses[-1]["step"], losses[-1].get("max_steps")) if losses else (0, None)
    total = total or (r["settings"] or {}).get("max_steps")
    text = [f"### Run {d['id']} · **{d['status']}** · step {step}/{total or '?'}",  # the plot's own last step
            f"Model **{r['settings'].get('name')}** from {r['settings'].get('model')} · by {d['author']}"]
    if losses:
        text.append(f"Last loss {losses[-1]['loss']:.4f} at step {step} · lr {losses[-1].get('lr', 0):.3g} · peak "
                    f"memory {losses[-1].get('peak_memory_gb', 0):.2f} GB" + pace(losses, total, d["status"]))
    if d["error"]:
        text.append(f"**Error:** {d['error']}")
    if d["status"] == RunStatus.DONE:
        text.append("Listed as a model in the Generate tab.")
    elif d["status"] == RunStatus.CANCELLED:
        text.append("Stopped with a checkpoint: Rerun it in the Runs tab to go on from there.")
    return "\n\n".join(text), frame, images, newest_lines(runs.log_tail(ctx.ws, r["id"]))


LOG_LINES = 10
SMOOTHING = 0.9  # the exponential moving average TensorBoard's slider also defaults near


def loss_frame(losses: list[dict]) -> pd.DataFrame:
    """Loss per step and its moving average, as two lines of one plot."""
    rows, ema = [], None
    for x in losses:
        ema = x["loss"] if ema is None else SMOOTHING * ema + (1 - SMOOTHING) * x["loss"]
        rows += [(x["step"], x["loss"], "loss"), (x["step"], ema, "smoothed")]
    return pd.DataFrame(rows, columns=["step", "loss", "series"])


def pace(losses: list[dict], total: int | None, status: str) -> str:
    """The pace (steps/s and the time left) from the last logged steps' own clock; empty when not running."""
    timed = [x for x in losses if "elapsed_s" in x][-20:]
    if status != RunStatus.RUNNING or len(timed) < 2 or timed[-1]["elapsed_s"] <= timed[0]["elapsed_s"]:
        return ""
    rate = (timed[-1]["step"] - timed[0]["step"]) / (timed[-1]["elapsed_s"] - timed[0]["elapsed_s"])
    if rate <= 0:
        return ""
    text = f" · {rate:.2f} steps/s" if rate >= 0.1 else f" · {1 / rate:.1f} s/step"
    if total:
        left = max(0, total - timed[-1]["step"]) / rate
        text += f" · about {left / 60:.0f} min left" if left >= 90 else f" · about {left:.0f} s left"
    return text


def newest_lines(log: str, n: int = LOG_LINES) -> str:
    """The last ``n`` lines, so the box shows the newest without scrolling (the whole log: the Runs tab)."""
    return "\n".join(log.splitlines()[-n:])


def config_from_form(values: dict) -> training.TrainConfig:
    cfg = {k: v for k, v in values.items() if k != "extra"}
    cfg["manifest"] = (cfg.get("manifest") or "").strip() or None
    if cfg.get("accelerate_config") in ("(none)", "", None):
        cfg["accelerate_config"] = None
    if cfg.get("recipe") in ("(none)", None):
        cfg["recipe"] = ""
    for key in ("max_steps", "batch_size", "resolution", "checkpoint_every", "validation_every", "epochs"):
        if cfg.get(key) is not None:
            cfg[key] = int(cfg[key])
    try:
        extra = shlex.split(values.get("extra") or "")
    except ValueError as exc:
        raise ValueError(f"more script arguments: {exc}") from None
    return training.TrainConfig.from_dict({**cfg, "extra": extra})


def start_training(ctx: StudioContext, cfg: training.TrainConfig, author: str) -> int:
    """Submit a training run; refused first as the worker would refuse it (busy devices, a taken name,
    missing weights: training.check_start)."""
    return runs.submit(ctx.ws, cfg, author)


def wire(ctx: StudioContext, t: TrainingTab) -> Refresh:
    """Returns the tab's part of the page's refresh clock (re-sending only what changed)."""
    w = Wiring(ctx)
    form_keys = list(t.form)

    def who(request) -> str:
        return username(ctx, request) or "local admin"

    def model_choices():
        from ..models.generate import registered_models

        return gr.Dropdown(choices=list(registered_models(ctx.ws)))

    fitted = PageMemory()  # per page: the form was set for this machine once (later opens keep what was typed)

    def on_open(request: gr.Request, run_id):
        first = fitted.changed(session_of(request), "machine", True)
        fit = training.machine_defaults() if first else {}
        form = [gr.update(value=fit[k]) if k in fit else gr.skip()
                for k in ("devices", "precision", "resolution", "batch_size")]
        # a page opened (or reloaded) while a training run goes on follows that run
        active = [r for r in ctx.ws.store.active_runs() if r["kind"] == "train"]
        follow = max(r["id"] for r in active) if active and run_id in (None, "", 0) else gr.skip()
        return gpus_note(), data_summary(ctx), model_choices(), history_frame(ctx), *form, follow

    w.on(t.tab.select, on_open, [t.run_id],
         [t.gpus, t.data_summary, t.form["model"], t.history, t.form["devices"], t.form["precision"],
          t.form["resolution"], t.form["batch_size"], t.run_id])

    def on_split(request: gr.Request, shares, seed):
        run = runs.submit(ctx.ws, SplitSettings.from_dict({"shares": str(shares), "seed": int(seed or 0)}), who(request))
        gr.Info(f"Split started as run {run}.")
        return data_summary(ctx)

    w.on(t.split_btn.click, on_split, [t.shares, t.split_seed], [t.data_summary])

    def on_pairs(request: gr.Request, strategy, per_image, split):
        run = runs.submit(ctx.ws, PairsSettings.from_dict({"strategy": strategy, "per_image": int(per_image or 1),
                                                           "split": split}), who(request))
        gr.Info(f"Pairing started as run {run}.")
        return data_summary(ctx)

    w.on(t.pairs_btn.click, on_pairs, [t.strategy, t.per_image, t.pair_split], [t.data_summary])

    def on_start(request: gr.Request, *values):
        run_id = start_training(ctx, config_from_form(dict(zip(form_keys, values))), who(request))
        return (run_id, *metrics_view(ctx, run_id), history_frame(ctx))

    view = [t.status, t.loss, t.validation, t.log]
    w.on(t.start.click, on_start, list(t.form.values()), [t.run_id, *view, t.history])

    pages = PageMemory()

    def summary_if_changed(session: str | None):
        """The split/pair summary only when a split or pairs run changed: pair statistics are not free."""
        key = tuple((r["id"], r["status"]) for kind in ("split", "pairs") for r in ctx.ws.store.runs(kind=kind, limit=1))
        return data_summary(ctx) if pages.changed(session, "split/pairs", key) else gr.skip()

    def on_refresh(request: gr.Request, run_id):
        return (*metrics_view(ctx, run_id), history_frame(ctx), summary_if_changed(session_of(request)))

    refresh_out = [*view, t.history, t.data_summary]
    w.on(t.run_id.submit, on_refresh, [t.run_id], refresh_out, quiet=True)
    run_panel.wire(w, ctx, RunPanel(t.run_id, t.stop, t.history), lambda run_id: metrics_view(ctx, run_id), view,
                   stopping="Run {run_id} will save a checkpoint and stop.")

    def gpus_api(request: gr.Request) -> list[dict]:
        """The CUDA GPUs training can use (empty without one)."""
        return training.gpus()

    def train_start_api(request: gr.Request, config: dict) -> int:
        """Start a training run from TrainConfig fields (name, model, max_steps, ...); returns the run id."""
        return start_training(ctx, training.TrainConfig.from_dict(config), who(request))

    def train_status_api(request: gr.Request, run_id: int) -> dict:
        """A training run: status, loss per step, latest validation images, log tail."""
        runs.reap(ctx.ws)
        r = ctx.ws.store.run(parse_id(run_id, "run id"))
        if r is None or r["kind"] != "train":
            raise ValueError(f"no training run {run_id}")
        rows = training.read_metrics(run_output(ctx, r))
        return {**runs.describe(r), "losses": [[x["step"], x["loss"]] for x in rows if "loss" in x],
                "validation": next((x["validation"] for x in reversed(rows) if "validation" in x), []),
                "log": runs.log_tail(ctx.ws, r["id"])}

    w.api(gpus_api, "gpus")
    w.api(train_start_api, "train_start")
    w.api(train_status_api, "train_status")
    return Refresh(pages.only_changes("training")(w.guard(on_refresh, refresh_out, quiet=True)), [t.run_id], refresh_out)
