"""Generate tab: reference face + prompt -> images with λ, one or two models side by side, λ sweeps.

What users of the official InstantID demo expect is here too: an optional pose photo, style
templates, fast mode (LCM-LoRA), a scheduler choice, and picking which detected face to use by
clicking it.
"""
from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass

import gradio as gr

from ..models.generate import DEFAULT_SWEEP, generate_run, registered_models
from ..models import (DEFAULT_STYLE, DEMO_NEGATIVE_PROMPT, FAST_GUIDANCE, FAST_STEPS, SCHEDULERS, STYLES,
                      INSTANTID, GenerationSettings, missing_weights)
from ..validate import parse_id
from ..models.zerogpu import gpu_function
from .access import StudioContext, username
from .wiring import Wiring


@dataclass
class GenerateTab:
    tab: gr.Tab
    reference: gr.Image
    image_id: gr.Textbox
    faces: gr.AnnotatedImage
    face_index: gr.Textbox
    pose: gr.Image
    pose_image_id: gr.Textbox
    prompt: gr.Textbox
    style: gr.Dropdown
    ip_scale: gr.Slider
    models: gr.CheckboxGroup
    sweep: gr.Checkbox
    sweep_values: gr.Textbox
    fast: gr.Checkbox
    negative: gr.Textbox
    strength: gr.Slider
    steps: gr.Slider
    guidance: gr.Slider
    scheduler: gr.Dropdown
    seed: gr.Number
    width: gr.Number
    height: gr.Number
    long_side: gr.Number
    face_only: gr.Checkbox
    face_margin: gr.Slider
    allow_mismatch: gr.Checkbox
    run: gr.Button
    note: gr.Markdown
    gallery: gr.Gallery
    weights: gr.Markdown


def build() -> GenerateTab:
    with gr.Tab("Generate", id="generate", visible=False) as tab:
        weights = gr.Markdown(elem_id="weights-status")
        with gr.Row():
            with gr.Column(scale=1):
                reference = gr.Image(label="Reference face (upload)", type="numpy", height=260, elem_id="gen-reference")
                image_id = gr.Textbox(label="…or a workspace image id", placeholder="e.g. 12")
                faces = gr.AnnotatedImage(label="Faces found: click one to use it", height=220, visible=False,
                                          elem_id="faces-found")
                face_index = gr.Textbox(label="Face # (0 = largest; empty: the largest, or curation's subject)",
                                        value="", elem_id="face-index")
                with gr.Accordion("Pose reference (optional)", open=False):
                    pose = gr.Image(label="Photo whose face pose to follow", type="numpy", height=200)
                    pose_image_id = gr.Textbox(label="…or a workspace image id", placeholder="e.g. 7")
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a photo of a person laughing, outdoors",
                                    elem_id="gen-prompt")
                style = gr.Dropdown(list(STYLES), value=DEFAULT_STYLE, label="Style template")
                ip_scale = gr.Slider(0.0, 1.5, value=0.8, step=0.05, label="λ: face (ID) weight", elem_id="lambda")
                models = gr.CheckboxGroup(label="Models (one or two, same seed)", choices=[], elem_id="models")
                with gr.Row():
                    sweep = gr.Checkbox(label="λ sweep", value=False)
                    sweep_values = gr.Textbox(label="λ values", value=", ".join(str(v) for v in DEFAULT_SWEEP))
                fast = gr.Checkbox(label=f"Fast mode (LCM-LoRA, {FAST_STEPS} steps)", value=False, elem_id="fast-mode")
                with gr.Accordion("Advanced", open=False):
                    negative = gr.Textbox(label="Negative prompt (default: the official InstantID demo's, as written there)",
                                          value=DEMO_NEGATIVE_PROMPT, lines=2)
                    strength = gr.Slider(0.0, 1.5, value=0.8, step=0.05, label="IdentityNet strength",
                                         elem_id="identitynet-strength")
                    steps = gr.Slider(1, 100, value=30, step=1, label="Steps", elem_id="gen-steps")
                    guidance = gr.Slider(0.0, 15.0, value=5.0, step=0.1, label="Guidance scale")
                    scheduler = gr.Dropdown(list(SCHEDULERS), value="Euler", label="Scheduler", elem_id="gen-scheduler")
                    with gr.Row():
                        seed = gr.Number(label="Seed", value=0, precision=0)
                        width = gr.Number(label="Width (0: the photo's framing)", value=0, precision=0, minimum=0)
                        height = gr.Number(label="Height (0: the photo's framing)", value=0, precision=0, minimum=0)
                        long_side = gr.Number(label="Long side (photo's framing)", value=1280, precision=0, elem_id="long-side")
                    with gr.Row():
                        face_only = gr.Checkbox(label="IdentityNet and face attention on the face region only",
                                                value=False)
                        face_margin = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Face region margin")
                    allow_mismatch = gr.Checkbox(
                        label="Use this face pack even if the model was trained on another (recorded)", value=False)
                run = gr.Button("Generate", variant="primary")
        note = gr.Markdown(elem_id="generate-note")
        gallery = gr.Gallery(label="Results: one row per model, the reference face first, then each λ", columns=5,
                             height="auto", object_fit="contain", elem_id="generated")
    return GenerateTab(tab, reference, image_id, faces, face_index, pose, pose_image_id, prompt, style, ip_scale, models,
                       sweep, sweep_values, fast, negative, strength, steps, guidance, scheduler, seed, width, height,
                       long_side, face_only, face_margin, allow_mismatch, run, note, gallery, weights)


#: a command inside a missing-weights message: shown as code, so a copy keeps its quotes and `*`
COMMAND = re.compile(r"(hf download \S+(?: --include(?: '[^']*')+)?(?: --local-dir \S+)?|python -m studio [\w -]+?)(?=[);,]|$| \()")


def _missing_html(message: str) -> str:
    """One missing part: its text, and each command in it as a copyable code block."""
    commands = COMMAND.findall(message)
    count = iter(range(1, len(commands) + 1))
    text = COMMAND.sub(lambda _: f"command {next(count)} below" if len(commands) > 1 else "the command below", message)
    blocks = "".join(f"\n\n```bash\n{c.strip()}\n```" for c in commands)
    return f"- {html.escape(text, quote=False)}{blocks}"


def weights_status(ctx: StudioContext) -> tuple[str, list[str]]:
    """Each model: ready, or its missing weights collapsed under its name with the commands as code (never
    downloads); and the names of the models that can load."""
    models = registered_models(ctx.ws)
    ready, lines, blocks = [], [], []
    for name, spec in models.items():
        missing = missing_weights(spec)
        family = "" if spec.family == INSTANTID else f"{spec.family}, "
        if not missing:
            ready.append(name)
            lines.append(f"- **{name}** ({family}face pack {spec.face_pack}): ready")
            continue
        parts = "\n".join(_missing_html(m) for m in missing)
        blocks.append(f"<details><summary><b>{html.escape(name)}</b> ({family}face pack {spec.face_pack}): "
                      f"{len(missing)} part(s) missing, not selectable</summary>\n\n{parts}\n\n</details>")
    return "\n\n".join(["**Models**", "\n".join(lines) or "No model has all its weights here.", *blocks]), ready


def models_update(ctx: StudioContext, chosen: list[str] | None = None) -> tuple[str, gr.CheckboxGroup]:
    """The weights status and the models that can load as choices; keeps what was ticked, else ticks the first."""
    status, ready = weights_status(ctx)
    return status, gr.CheckboxGroup(choices=ready, value=[n for n in chosen or [] if n in ready] or ready[:1])


def family_controls(ctx: StudioContext, chosen: list[str] | None) -> tuple:
    """The IdentityNet's controls (its strength, a pose photo) only while an InstantID model is chosen: an
    IP-Adapter-FaceID model has no IdentityNet and no keypoints."""
    models = registered_models(ctx.ws)
    shown = not chosen or any(models[n].family == INSTANTID for n in chosen if n in models)
    return gr.Slider(visible=shown), gr.Image(visible=shown), gr.Textbox(visible=shown)


@gpu_function(duration=180)
def _on_gpu(work):
    return work()


def _optional_int(value, name: str, zero_is_empty: bool = False) -> int | None:
    if value is None or str(value).strip() == "" or (zero_is_empty and str(value).strip() in ("0", "0.0")):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None


def run_generation(ctx: StudioContext, reference, image_id, prompt, ip_scale, model_names, sweep, sweep_values,
                   negative, strength, steps, guidance, seed, width, height, face_only, author: str, *,
                   face_index=None, pose=None, pose_image_id=None, style: str = DEFAULT_STYLE,
                   scheduler: str = "Euler", long_side=1280, face_margin: float = 0.0,
                   allow_pack_mismatch: bool = False):
    """Widget values -> :func:`studio.models.generate.generate_run`; returns (note, [(sample path, label)], face)."""
    if not (prompt or "").strip():
        raise ValueError("write a prompt")
    settings = GenerationSettings(
        prompt=prompt.strip(), negative_prompt=negative or "", ip_scale=float(ip_scale),
        identitynet_scale=float(strength), steps=int(steps), guidance=float(guidance), seed=int(seed or 0),
        width=_optional_int(width, "width", True), height=_optional_int(height, "height", True), face_region_only=bool(face_only),
        long_side=_optional_int(long_side, "long side") or 1280, face_margin=float(face_margin or 0.0),
        style=style or DEFAULT_STYLE, scheduler=scheduler or "Euler")
    if reference is None and not str(image_id or "").strip():
        raise ValueError("upload a reference photo or give a workspace image id")
    pose_id = parse_id(pose_image_id) if pose is None and str(pose_image_id or "").strip() else None
    note, samples, _, face = generate_run(
        ctx.ws, ctx.models, list(model_names or []), settings, face_pack=ctx.face_pack, rgb=reference,
        image_id=None if reference is not None else parse_id(image_id), face_index=_optional_int(face_index, "face #"),
        pose_rgb=pose, pose_image_id=pose_id, sweep=sweep_values if sweep else None,
        allow_pack_mismatch=bool(allow_pack_mismatch), author=author, runner=_on_gpu)
    return note, [(s.path, f"{s.model} · λ={s.ip_scale:g}") for s in samples], face


def results_grid(ctx: StudioContext, items: list[tuple], face, n_models: int) -> dict:
    """The gallery as a models x λ grid: one row per model, the reference face first in each row, each image
    whole (a sweep wrapped into a ragged list and cropped non-square outputs)."""
    per_row = max(1, len(items) // max(1, n_models))
    ref = (ctx.media.face_thumbnail(face.reference, face.bbox), "reference face")
    cells = []
    for k in range(0, len(items), per_row):
        cells.append(ref)
        cells += [(ctx.media.file(str(p.relative_to(ctx.ws.root))), label) for p, label in items[k:k + per_row]]
    return gr.Gallery(value=cells, columns=per_row + 1)


def detected_faces(ctx: StudioContext, rgb) -> list[tuple[int, int, int, int]]:
    """Boxes of the faces in an uploaded photo, largest first (the numbering face # uses)."""
    from ..dataset.faces import FaceAnalyzer, MissingModelError, resolve_pack

    try:
        analyzer = FaceAnalyzer(resolve_pack(ctx.face_pack))
    except MissingModelError as exc:
        raise ValueError(str(exc)) from None
    return [tuple(int(v) for v in f["bbox"]) for f in analyzer.analyze(rgb)]


def wire(ctx: StudioContext, t: GenerateTab) -> None:
    w = Wiring(ctx)
    inputs = [t.reference, t.image_id, t.prompt, t.ip_scale, t.models, t.sweep, t.sweep_values, t.negative,
              t.strength, t.steps, t.guidance, t.seed, t.width, t.height, t.face_only, t.face_index, t.pose,
              t.pose_image_id, t.style, t.scheduler, t.long_side, t.face_margin, t.allow_mismatch]

    def on_run(request: gr.Request, *values, progress=gr.Progress()):
        progress(0, desc="loading models and generating")
        (reference, image_id, prompt, ip_scale, models, sweep, sweep_values, negative, strength, steps, guidance, seed,
         width, height, face_only, face_index, pose, pose_image_id, style, scheduler, long_side, face_margin,
         allow_mismatch) = values
        note, items, face = run_generation(
            ctx, reference, image_id, prompt, ip_scale, models, sweep, sweep_values, negative, strength, steps,
            guidance, seed, width, height, face_only, author=username(ctx, request) or "local admin",
            face_index=face_index, pose=pose, pose_image_id=pose_image_id, style=style, scheduler=scheduler,
            long_side=long_side, face_margin=face_margin, allow_pack_mismatch=allow_mismatch)
        return note, results_grid(ctx, items, face, len(models or []))

    w.on(t.run.click, on_run, inputs, [t.note, t.gallery])

    def on_reference(request: gr.Request, rgb):
        """Number the faces of an uploaded photo so one can be picked; a photo with one face needs no choice."""
        if rgb is None:
            return gr.AnnotatedImage(visible=False, value=None), "", ""
        boxes = detected_faces(ctx, rgb)
        if not boxes:
            return gr.AnnotatedImage(visible=False, value=None), "", "No face found in this photo."
        labels = [(box, f"face {i}") for i, box in enumerate(boxes)]
        more = len(boxes) > 1
        return (gr.AnnotatedImage(value=(rgb, labels), visible=more), "0" if more else "",
                f"{len(boxes)} faces found; using face 0 (the largest): click another to use it." if more else "")

    w.on(t.reference.upload, on_reference, [t.reference], [t.faces, t.face_index, t.note])
    w.on(t.reference.clear, on_reference, [t.reference], [t.faces, t.face_index, t.note])

    def on_pick(evt: gr.SelectData):
        return str(evt.index)

    w.on(t.faces.select, on_pick, None, [t.face_index], queue=False, role=None)

    def on_fast(on: bool):
        """The demo's fast mode settings; switching it off restores the defaults."""
        if on:
            return "LCM", FAST_STEPS, FAST_GUIDANCE
        return "Euler", 30, 5.0

    w.on(t.fast.input, on_fast, [t.fast], [t.scheduler, t.steps, t.guidance], queue=False, role=None)

    def on_open(request: gr.Request, chosen):
        """Models trained since the page loaded are listed when the tab is opened again."""
        return models_update(ctx, chosen)

    w.on(t.tab.select, on_open, [t.models], [t.weights, t.models])

    def on_models(request: gr.Request, chosen):
        return family_controls(ctx, chosen)

    w.on(t.models.change, on_models, [t.models], [t.strength, t.pose, t.pose_image_id])

    def generate_api(request: gr.Request, prompt: str, models: list[str], image_id: int | None = None,
                     ip_scale: float = 0.8, sweep: str = "", negative_prompt: str | None = None,
                     identitynet_scale: float = 0.8, steps: int | None = None, guidance: float | None = None,
                     seed: int = 0, width: int | None = None, height: int | None = None,
                     face_region_only: bool = False, face_index: int | None = None, pose_image_id: int | None = None,
                     style: str = DEFAULT_STYLE, scheduler: str = "Euler", fast: bool = False, long_side: int = 1280,
                     face_margin: float = 0.0, allow_pack_mismatch: bool = False) -> dict:
        """Generate from a workspace image's face (optionally another image's pose); returns the note and samples.

        ``fast``: LCM-LoRA with the LCM scheduler (5 steps, guidance 1.5 unless given).
        """
        scheduler = "LCM" if fast else scheduler
        lcm = scheduler == "LCM"
        note, items, _ = run_generation(
            ctx, None, str(image_id) if image_id is not None else "", prompt, ip_scale, models, bool(sweep), sweep,
            DEMO_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt, identitynet_scale,
            steps if steps is not None else (FAST_STEPS if lcm else 30),
            guidance if guidance is not None else (FAST_GUIDANCE if lcm else 5.0), seed, width, height,
            face_region_only, author=username(ctx, request) or "api", face_index=face_index,
            pose_image_id=str(pose_image_id) if pose_image_id is not None else None, style=style,
            scheduler=scheduler, long_side=long_side, face_margin=face_margin, allow_pack_mismatch=allow_pack_mismatch)
        rows = {g["output_path"]: g for g in ctx.ws.store.generations(batch=items[0][0].parent.name)} if items else {}
        out = []
        for p, label in items:
            rel = os.path.relpath(p, ctx.ws.root)
            g = rows.get(rel, {})
            out.append({"output": rel, "label": label, "id": g.get("id"), "settings": g.get("settings"),
                        "face": g.get("face")})
        return {"note": note, "samples": out}

    def models_api(request: gr.Request) -> dict:
        """Registered models and what weights each is missing on this machine."""
        return {name: missing_weights(spec) for name, spec in registered_models(ctx.ws).items()}

    w.api(generate_api, "generate")
    w.api(models_api, "models")
