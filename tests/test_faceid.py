"""IP-Adapter-FaceID, the second model family, with tiny weights in the release's layout loaded through
the production loader; its face projection and decoupled attention checked against the equations."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from test_instantid import EMB, S, kps_image, pixels  # the same face, settings and keypoints as InstantID's tests

from studio.models import (FACEID, CheckpointError, GenerationSettings, ModelCache, ModelSpec, check_faceid,
                           family_of, faceid_state_dict, load_base, load_faceid, load_instantid, missing_weights)
from studio.models.adapter import load_ip_adapter_state
from studio.models.faceid import local_faceid_file



@pytest.fixture(scope="module")
def faceid_by_dtype(tiny_faceid_spec):
    return {"float32": load_faceid(tiny_faceid_spec, "cpu"),
            "bfloat16": load_faceid(tiny_faceid_spec, "cpu", dtype=torch.bfloat16)}


# -- the equations, written here from the paper and the published description ------------------------

def projection_reference(p: dict, e: torch.Tensor, tokens: int) -> torch.Tensor:
    """Face projection: LayerNorm(reshape(W2 · GELU(W1 · e + b1) + b2, (tokens, D)))."""
    h = F_gelu(e @ p["proj.0.weight"].T + p["proj.0.bias"])
    x = (h @ p["proj.2.weight"].T + p["proj.2.bias"]).reshape(e.shape[0], tokens, -1)
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), p["norm.weight"], p["norm.bias"], eps=1e-5)


def F_gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))  # the exact GELU


def _attend(q, k, v, heads):
    def split(t):
        b, n, _ = t.shape
        return t.reshape(b, n, heads, -1).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    z = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
    b, h, n, d = z.shape
    return z.transpose(1, 2).reshape(b, n, h * d)


class DecoupledAttention:
    """Z = Attn(Q, K, V) + λ · Attn(Q, K', V'): text keys and values, plus the face tokens' own through
    W'_k and W'_v; the sum goes through the layer's output projection."""

    def __init__(self, wk_ip, wv_ip, face_tokens, lam: float):
        self.wk_ip, self.wv_ip, self.face_tokens, self.lam = wk_ip, wv_ip, face_tokens, lam

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        x = hidden_states
        text = encoder_hidden_states
        q = attn.to_q(x)
        z = _attend(q, attn.to_k(text), attn.to_v(text), attn.heads)
        face = self.face_tokens.to(x.dtype)
        z = z + self.lam * _attend(q, face @ self.wk_ip.to(x.dtype).T, face @ self.wv_ip.to(x.dtype).T, attn.heads)
        return attn.to_out[1](attn.to_out[0](z.to(x.dtype)))


def reference_generate(spec: ModelSpec, state: dict, emb, settings: GenerationSettings, dtype) -> Image.Image:
    """The stock SDXL pipeline on a fresh copy of the base, every cross-attention replaced by
    :class:`DecoupledAttention` fed the reference projection of [zeros, e] (the negative face first)."""
    from diffusers import StableDiffusionXLPipeline

    from studio.models import make_scheduler

    base = load_base(spec.base, "cpu", dtype)
    pipe = StableDiffusionXLPipeline(**base.components, force_zeros_for_empty_prompt=base.force_zeros_for_empty_prompt)
    pipe.scheduler = make_scheduler(settings.scheduler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    p = {k: v.to(dtype) for k, v in state["image_proj"].items()}
    e = torch.tensor(np.array(emb, dtype=np.float32)).reshape(1, -1).to(dtype)
    tokens = projection_reference(p, torch.cat([torch.zeros_like(e), e]), 4)
    procs, n = {}, 0
    for name, proc in pipe.unet.attn_processors.items():
        if name.endswith("attn1.processor"):
            procs[name] = proc
            continue
        key = 2 * n + 1
        procs[name] = DecoupledAttention(state["ip_adapter"][f"{key}.to_k_ip.weight"],
                                         state["ip_adapter"][f"{key}.to_v_ip.weight"], tokens, settings.ip_scale)
        n += 1
    pipe.unet.set_attn_processor(procs)
    with torch.inference_mode():
        return pipe(prompt=settings.prompt, negative_prompt=settings.negative_prompt, num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance, width=settings.width, height=settings.height,
                    generator=torch.Generator("cpu").manual_seed(settings.seed)).images[0]


@pytest.mark.parametrize("dtype, tol", [("float32", 0.05), ("bfloat16", 2.0)])  # measured: 0.0001 and 0.76
def test_generation_matches_the_equations(faceid_by_dtype, tiny_faceid_spec, dtype, tol):
    """The studio's generation through diffusers equals the equations applied to the same weights, for
    λ 0, 0.5 and 1; a bent IP weight moves the reference beyond the tolerance."""
    model = faceid_by_dtype[dtype]
    state = load_ip_adapter_state(local_faceid_file(tiny_faceid_spec.ip_adapter))
    for lam in (0.0, 0.5, 1.0):
        s = dataclasses.replace(S, ip_scale=lam)
        ours = pixels(model(EMB, kps_image(), s))
        expected = pixels(reference_generate(tiny_faceid_spec, state, EMB, s, getattr(torch, dtype)))
        assert np.abs(ours - expected).mean() <= tol, (dtype, lam, np.abs(ours - expected).mean())
    bent = {part: {k: v.clone() for k, v in d.items()} for part, d in state.items()}
    bent["ip_adapter"]["1.to_v_ip.weight"] *= -3
    bent_image = pixels(reference_generate(tiny_faceid_spec, bent, EMB, dataclasses.replace(S, ip_scale=1.0),
                                           getattr(torch, dtype)))
    assert np.abs(pixels(model(EMB, kps_image(), dataclasses.replace(S, ip_scale=1.0))) - bent_image).mean() > 4 * tol


def test_the_projection_diffusers_builds_is_the_equation(faceid_by_dtype, tiny_faceid_spec):
    model = faceid_by_dtype["float32"]
    state = load_ip_adapter_state(local_faceid_file(tiny_faceid_spec.ip_adapter))
    e = torch.tensor(EMB).reshape(1, 1, 1, -1)
    with torch.no_grad():
        ours = model.pipe.unet.encoder_hid_proj([e])[0].reshape(1, 4, -1)
    expected = projection_reference(state["image_proj"], e.reshape(1, -1), 4)
    assert (ours - expected).abs().max().item() <= 1e-5
    assert faceid_state_dict(model.pipe.unet)["image_proj"].keys() == state["image_proj"].keys()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lambda_changes_the_output_and_zero_is_the_text_alone(faceid_by_dtype, dtype):
    model = faceid_by_dtype[dtype]
    a = pixels(model(EMB, kps_image(), S))
    b = pixels(model(EMB, kps_image(), dataclasses.replace(S, ip_scale=0.0)))
    other = pixels(model(-EMB, kps_image(), dataclasses.replace(S, ip_scale=0.0)))
    assert np.abs(a - b).mean() > 1.0
    assert np.array_equal(b, other)  # at λ = 0 the face does not reach the image


def test_missing_weights_name_the_download_command(tmp_path, tiny_faceid_spec):
    released = ModelSpec("faceid", ip_adapter="h94/IP-Adapter-FaceID", identitynet="", family=FACEID,
                         lora="h94/IP-Adapter-FaceID", base=tiny_faceid_spec.base)
    missing = missing_weights(released)
    assert any("hf download h94/IP-Adapter-FaceID --include 'ip-adapter-faceid_sdxl.bin'" in m for m in missing)
    assert any("ip-adapter-faceid_sdxl_lora.safetensors" in m for m in missing)
    assert missing_weights(tiny_faceid_spec) == []
    local = dataclasses.replace(tiny_faceid_spec, ip_adapter=str(tmp_path))
    assert missing_weights(local) == [f"IP-Adapter-FaceID '{tmp_path}': {tmp_path} holds no ip-adapter-faceid_sdxl.bin"]


def test_a_checkpoint_that_does_not_fit_is_named(faceid_by_dtype, tiny_faceid_spec):
    unet = faceid_by_dtype["float32"].pipe.unet
    state = load_ip_adapter_state(local_faceid_file(tiny_faceid_spec.ip_adapter))
    check_faceid(state, unet)  # the release's LoRA keys are accepted
    broken = {"image_proj": dict(state["image_proj"]), "ip_adapter": dict(state["ip_adapter"])}
    del broken["ip_adapter"]["3.to_k_ip.weight"]
    broken["ip_adapter"]["9.to_x_ip.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="1 missing \\(3.to_k_ip.weight\\).*1 unexpected \\(9.to_x_ip.weight\\)"):
        check_faceid(broken, unet)
    with pytest.raises(CheckpointError, match="not an IP-Adapter-FaceID projection"):
        check_faceid({"image_proj": {"latents": torch.zeros(1)}, "ip_adapter": {}}, unet)


def test_the_family_saves_what_it_loads(faceid_by_dtype, tiny_faceid_spec, tmp_path):
    family = family_of(tiny_faceid_spec)
    assert family.name == "IP-Adapter-FaceID" and family.trainable == ("face projection", "IP-adapter")
    model = family.load(tiny_faceid_spec, "cpu")
    with torch.no_grad():
        next(iter(model.pipe.unet.encoder_hid_proj.parameters())).add_(0.5)
    family.save_official(tmp_path / "out", model.pipe.unet)
    assert (tmp_path / "out" / "ip-adapter-faceid_sdxl.bin").is_file()
    again = family.load(dataclasses.replace(tiny_faceid_spec, ip_adapter=str(tmp_path / "out")), "cpu")
    assert pixels(model(EMB, kps_image(), S)).tolist() == pixels(again(EMB, kps_image(), S)).tolist()


def test_side_by_side_with_instantid_on_one_base(tiny_spec, tiny_faceid_spec):
    """Both families on one SDXL base in one cache: each call puts its own adapter in place, so taking
    turns gives what each model gives alone."""
    alone_i = pixels(load_instantid(tiny_spec, "cpu")(EMB, kps_image(), S))
    alone_f = pixels(load_faceid(tiny_faceid_spec, "cpu")(EMB, kps_image(), S))
    cache = ModelCache(device="cpu", max_models=2)
    inst, face = cache.get(tiny_spec), cache.get(tiny_faceid_spec)
    assert inst.base is face.base  # one SDXL in memory
    for _ in range(2):
        assert pixels(face(EMB, kps_image(), S)).tolist() == alone_f.tolist()
        assert pixels(inst(EMB, kps_image(), S)).tolist() == alone_i.tolist()
    assert np.abs(alone_i - alone_f).mean() > 1.0


def test_the_generate_tab_shows_the_identitynet_controls_only_for_instantid(tmp_path, tiny_spec, tiny_faceid_spec):
    from studio.auth import AccessPolicy
    from studio.models.generate import register_model
    from studio.ui.access import StudioContext
    from studio.ui.generate import family_controls, weights_status
    from studio.workspace import Workspace

    ctx = StudioContext(Workspace.open(tmp_path / "ws"), AccessPolicy("none"))
    register_model(ctx.ws, tiny_spec)
    register_model(ctx.ws, tiny_faceid_spec)
    visible = [[c.visible for c in family_controls(ctx, chosen)] for chosen in
               (["tiny-faceid"], ["tiny", "tiny-faceid"], ["tiny"], [])]
    assert visible == [[False] * 3, [True] * 3, [True] * 3, [True] * 3]
    status, selectable = weights_status(ctx)
    assert "**tiny-faceid** (IP-Adapter-FaceID, face pack bundled): ready" in status
    assert "**tiny** (face pack bundled): ready" in status
    assert "<b>IP-Adapter-FaceID</b> (IP-Adapter-FaceID, face pack antelopev2): 2 part(s) missing" in status
    assert "```bash\nhf download h94/IP-Adapter-FaceID --include 'ip-adapter-faceid_sdxl.bin'\n```" in status
    assert selectable == ["tiny", "tiny-faceid"]  # a model that cannot load is not offered


def test_the_lora_is_optional_embedded_or_from_its_own_file(tiny_faceid_spec, tmp_path):
    """A FaceID model without a LoRA (the release's LoRA keys in the adapter file left out), with the LoRA the
    file carries (diffusers' load_ip_adapter loads it), or with one from its own file (diffusers' LoRA loader):
    each changes the image, a missing one is named, and a model with a LoRA gets an SDXL base of its own."""
    from diffusers import UNet2DConditionModel
    from tiny_models import build_tiny_lora

    from studio.models.faceid import FACEID_LORA_FILE

    missing = dataclasses.replace(tiny_faceid_spec, lora=str(tmp_path / "none"))
    assert missing_weights(missing) == [f"IP-Adapter-FaceID LoRA '{tmp_path / 'none'}': {tmp_path / 'none'} holds no "
                                        f"{FACEID_LORA_FILE}"]
    unet = UNet2DConditionModel.from_pretrained(f"{tiny_faceid_spec.base}/unet")
    (build_tiny_lora(unet, tmp_path / "lora", seed=5) / "pytorch_lora_weights.safetensors").rename(
        tmp_path / "lora" / FACEID_LORA_FILE)
    embedded = dataclasses.replace(tiny_faceid_spec, name="embedded", lora="embedded")
    own_file = dataclasses.replace(tiny_faceid_spec, name="own-file", lora=str(tmp_path / "lora"))
    assert missing_weights(embedded) == [] and missing_weights(own_file) == []
    cache = ModelCache(device="cpu", max_models=3)
    plain, emb, own = cache.get(tiny_faceid_spec), cache.get(embedded), cache.get(own_file)
    assert plain.base is not emb.base and plain.base is not own.base and emb.base is not own.base
    a, b, c = (pixels(m(EMB, kps_image(), S)) for m in (plain, emb, own))
    assert np.abs(a - b).mean() > 0.5 and np.abs(a - c).mean() > 0.5 and np.abs(b - c).mean() > 0.5
    assert pixels(plain(EMB, kps_image(), S)).tolist() == a.tolist()  # the plain model is untouched
    assert emb.own_lora == "faceid_0" and own.own_lora == "faceid" and plain.own_lora is None
