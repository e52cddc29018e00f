"""Generate tab: reference face + prompt -> images with λ, one or two models side by side, λ sweeps."""
from __future__ import annotations

import os
from dataclasses import dataclass

import gradio as gr

from ..generate import DEFAULT_SWEEP, generate_run, registered_models
from ..instantid import GenerationSettings, missing_weights
from ..zerogpu import gpu_function
from ..validate import parse_id
from .access import StudioContext, require_admin, username
from .feedback import api_errors, keep_on_mistake


@dataclass
class GenerateTab:
    tab: gr.Tab
    reference: gr.Image
    image_id: gr.Textbox
    prompt: gr.Textbox
    ip_scale: gr.Slider
    models: gr.CheckboxGroup
    sweep: gr.Checkbox
    sweep_values: gr.Textbox
    negative: gr.Textbox
    strength: gr.Slider
    steps: gr.Slider
    guidance: gr.Slider
    seed: gr.Number
    width: gr.Number
    height: gr.Number
    face_only: gr.Checkbox
    run: gr.Button
    note: gr.Markdown
    gallery: gr.Gallery
    weights: gr.Markdown


def build() -> GenerateTab:
    with gr.Tab("Generate", id="generate", visible=False) as tab:
        weights = gr.Markdown(elem_id="weights-status")
        with gr.Row():
            with gr.Column(scale=1):
                reference = gr.Image(label="Reference face (upload)", type="numpy", height=280)
                image_id = gr.Textbox(label="…or a workspace image id", placeholder="e.g. 12")
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a photo of a person laughing, outdoors")
                ip_scale = gr.Slider(0.0, 1.5, value=0.8, step=0.05, label="λ: face (ID) weight", elem_id="lambda")
                models = gr.CheckboxGroup(label="Models (one or two, same seed)", choices=[], elem_id="models")
                with gr.Row():
                    sweep = gr.Checkbox(label="λ sweep", value=False)
                    sweep_values = gr.Textbox(label="λ values", value=", ".join(str(v) for v in DEFAULT_SWEEP))
                with gr.Accordion("Advanced", open=False):
                    negative = gr.Textbox(label="Negative prompt", value="")
                    strength = gr.Slider(0.0, 1.5, value=0.8, step=0.05, label="IdentityNet strength")
                    steps = gr.Slider(1, 100, value=30, step=1, label="Steps")
                    guidance = gr.Slider(0.0, 15.0, value=5.0, step=0.5, label="Guidance scale")
                    with gr.Row():
                        seed = gr.Number(label="Seed", value=0, precision=0)
                        width = gr.Number(label="Width", value=1024, precision=0)
                        height = gr.Number(label="Height", value=1024, precision=0)
                    face_only = gr.Checkbox(label="IdentityNet on the face region only", value=False)
                run = gr.Button("Generate", variant="primary")
        note = gr.Markdown(elem_id="generate-note")
        gallery = gr.Gallery(label="Results (model · λ)", columns=5, height="auto", elem_id="generated")
    return GenerateTab(tab, reference, image_id, prompt, ip_scale, models, sweep, sweep_values, negative, strength,
                       steps, guidance, seed, width, height, face_only, run, note, gallery, weights)


def weights_status(ctx: StudioContext) -> tuple[str, list[str]]:
    """Markdown listing each model's missing weights (never downloads), and the model names."""
    models = registered_models(ctx.ws)
    lines = []
    for name, spec in models.items():
        missing = missing_weights(spec)
        lines.append(f"- **{name}**: " + ("ready" if not missing else "missing weights:\n" + "\n".join(f"    - {m}" for m in missing)))
    return "**Models**\n" + "\n".join(lines), list(models)


@gpu_function(duration=180)
def _on_gpu(work):
    return work()


def run_generation(ctx: StudioContext, reference, image_id, prompt, ip_scale, model_names, sweep, sweep_values,
                   negative, strength, steps, guidance, seed, width, height, face_only, author: str):
    """Widget values -> :func:`studio.generate.generate_run`; returns (note, [(sample path, label)])."""
    if not (prompt or "").strip():
        raise ValueError("write a prompt")
    settings = GenerationSettings(
        prompt=prompt.strip(), negative_prompt=negative or "", ip_scale=float(ip_scale),
        identitynet_scale=float(strength), steps=int(steps), guidance=float(guidance), seed=int(seed or 0),
        width=int(width or 1024), height=int(height or 1024), face_region_only=bool(face_only))
    if reference is None and not str(image_id or "").strip():
        raise ValueError("upload a reference photo or give a workspace image id")
    note, samples, _ = generate_run(
        ctx.ws, ctx.models, list(model_names or []), settings, face_pack=ctx.face_pack, rgb=reference,
        image_id=None if reference is not None else parse_id(image_id), sweep=sweep_values if sweep else None,
        author=author, runner=_on_gpu)
    return note, [(s.path, f"{s.model} · λ={s.ip_scale:g}") for s in samples]


def wire(ctx: StudioContext, t: GenerateTab) -> None:
    inputs = [t.reference, t.image_id, t.prompt, t.ip_scale, t.models, t.sweep, t.sweep_values, t.negative,
              t.strength, t.steps, t.guidance, t.seed, t.width, t.height, t.face_only]

    @keep_on_mistake(2)
    def on_run(request: gr.Request, *values, progress=gr.Progress()):
        require_admin(ctx, request)
        progress(0, desc="loading models and generating")
        note, items = run_generation(ctx, *values, author=username(ctx, request) or "local admin")
        return note, [(ctx.media.file(str(p.relative_to(ctx.ws.root))), label) for p, label in items]

    t.run.click(on_run, inputs, [t.note, t.gallery], api_visibility="private")

    @keep_on_mistake(2)
    def on_open(request: gr.Request, chosen):
        """Models trained since the page loaded are listed when the tab is opened again."""
        require_admin(ctx, request)
        status, names = weights_status(ctx)
        return status, gr.CheckboxGroup(choices=names, value=[n for n in chosen or [] if n in names] or names[:1])

    t.tab.select(on_open, [t.models], [t.weights, t.models], api_visibility="private")

    @api_errors
    def generate_api(request: gr.Request, prompt: str, models: list[str], image_id: int | None = None,
                     ip_scale: float = 0.8, sweep: str = "", negative_prompt: str = "", identitynet_scale: float = 0.8,
                     steps: int = 30, guidance: float = 5.0, seed: int = 0, width: int = 1024, height: int = 1024,
                     face_region_only: bool = False) -> dict:
        """Generate from a workspace image's face; returns the note and the saved sample paths with λ."""
        require_admin(ctx, request)
        note, items = run_generation(ctx, None, str(image_id) if image_id is not None else "", prompt, ip_scale,
                                     models, bool(sweep), sweep, negative_prompt, identitynet_scale, steps, guidance,
                                     seed, width, height, face_region_only, author=username(ctx, request) or "api")
        return {"note": note, "samples": [{"output": os.path.relpath(p, ctx.ws.root), "label": label} for p, label in items]}

    @api_errors
    def models_api(request: gr.Request) -> dict:
        """Registered models and what weights each is missing on this machine."""
        require_admin(ctx, request)
        return {name: missing_weights(spec) for name, spec in registered_models(ctx.ws).items()}

    gr.api(generate_api, api_name="generate")
    gr.api(models_api, api_name="models")
