"""InstantID on diffusers with tiny weights loaded through the production loader."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from studio.instantid import (SDXL_UNET_CONFIG, CheckpointError, GenerationSettings, MissingWeightsError, ModelSpec,
                              ResamplerShape, check_ip_adapter, ip_adapter_layout, load_instantid, missing_weights,
                              route_face_tokens)

S = GenerationSettings(prompt="a smiling person", steps=2, width=64, height=64, guidance=5.0, seed=3)
EMB = np.random.default_rng(0).normal(size=512).astype(np.float32) * 8


def kps_image():
    from studio.draw import draw_kps

    return draw_kps(64, 64, [[22, 26], [42, 26], [32, 36], [24, 46], [40, 46]], radius=3, stick_width=1)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


def test_lambda_changes_the_output(tiny_model):
    a = pixels(tiny_model(EMB, kps_image(), S))
    b = pixels(tiny_model(EMB, kps_image(), dataclasses.replace(S, ip_scale=0.0)))
    assert np.abs(a - b).mean() > 1.0
    again = pixels(tiny_model(EMB, kps_image(), S))
    assert np.array_equal(a, again)  # same seed, same settings: same image


def test_face_embedding_changes_the_output(tiny_model):
    other = np.random.default_rng(1).normal(size=512).astype(np.float32) * 8
    a = pixels(tiny_model(EMB, kps_image(), S))
    b = pixels(tiny_model(other, kps_image(), S))
    assert np.abs(a - b).mean() > 0.1


def test_lambda_zero_equals_no_adapter(tiny_spec):
    """λ = 0 reproduces the pipeline whose UNet has no IP-adapter (IdentityNet fed the same tokens)."""
    model = load_instantid(tiny_spec, "cpu")
    with_adapter = pixels(model(EMB, kps_image(), dataclasses.replace(S, ip_scale=0.0)))
    embeds = model.embeds(EMB, cfg=True)
    tokens = model.face_tokens(embeds)
    pipe = model.pipe
    pipe.unload_ip_adapter()
    assert pipe.unet.encoder_hid_proj is None
    with torch.inference_mode(), route_face_tokens(pipe.controlnet, tokens):
        plain = pipe(prompt=S.prompt, image=kps_image(), controlnet_conditioning_scale=S.identitynet_scale,
                     num_inference_steps=S.steps, guidance_scale=S.guidance, width=64, height=64,
                     generator=torch.Generator().manual_seed(S.seed)).images[0]
    np.testing.assert_array_equal(with_adapter, pixels(plain))


def test_identitynet_receives_the_face_tokens(tiny_model):
    seen = []
    # a forward (post) hook sees the kwargs the module actually ran with
    hook = tiny_model.pipe.controlnet.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        tiny_model(EMB, kps_image(), S)
    finally:
        hook.remove()
    expected = tiny_model.face_tokens(tiny_model.embeds(EMB, cfg=True))
    assert len(seen) == S.steps
    assert seen[0].shape == (2, 4, 64)  # (negative + positive, 4 tiny Resampler tokens, context width)
    torch.testing.assert_close(seen[0], expected)
    # the negative half comes from the zero embedding, as InstantID does
    torch.testing.assert_close(seen[0][0], tiny_model.face_tokens(torch.zeros(1, 1, 1, 512))[0])
    # and the UNet still gets the text embeddings: the hook is gone after the call
    assert not tiny_model.pipe.controlnet._forward_pre_hooks


def test_face_region_mask_limits_the_identitynet(tiny_model):
    full = pixels(tiny_model(EMB, kps_image(), S))
    mask = torch.zeros(64, 64)
    masked = pixels(tiny_model(EMB, kps_image(), dataclasses.replace(S, face_region_only=True), mask=mask))
    off = pixels(tiny_model(EMB, kps_image(), dataclasses.replace(S, identitynet_scale=0.0)))
    assert np.abs(full - masked).mean() > 0.1
    np.testing.assert_array_equal(masked, off)  # an empty mask is the same as no IdentityNet


def test_official_layout_fits_full_size_sdxl_on_meta():
    """Real InstantID key names and shapes, checked against SDXL 1.0 without allocating it."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
    assert sum(p.numel() for p in unet.parameters()) > 2.5e9 and unet.device.type == "meta"
    layout = ip_adapter_layout(unet)
    proj, ip = layout["image_proj"], layout["ip_adapter"]
    assert proj["latents"] == (1, 16, 1280) and proj["proj_in.weight"] == (1280, 512)
    assert proj["proj_out.weight"] == (2048, 1280) and proj["layers.3.0.to_kv.weight"] == (2560, 1280)
    assert proj["layers.0.1.1.weight"] == (5120, 1280)
    assert len(ip) == 140 and ip["1.to_k_ip.weight"] == (640, 2048) and "139.to_v_ip.weight" in ip
    state = {part: {k: torch.empty(s, device="meta") for k, s in keys.items()} for part, keys in layout.items()}
    check_ip_adapter(state, unet)
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=True)
    resampler = unet.encoder_hid_proj.image_projection_layers[0]
    assert isinstance(resampler, IPAdapterPlusImageProjection)
    assert resampler.latents.shape == (1, 16, 1280) and len(resampler.layers) == 4
    assert resampler.layers[0].attn.heads == 20 and resampler.proj_out.weight.shape == (2048, 1280)
    procs = [p for p in unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
    assert len(procs) == 70 and procs[0].num_tokens == [16]


def test_bad_checkpoints_are_named(tiny_model):
    from tiny_models import random_ip_adapter

    unet = tiny_model.pipe.unet
    good = random_ip_adapter(tiny_model.pipe.controlnet)  # same block layout as the UNet it came from
    check_ip_adapter(good, tiny_model.pipe.controlnet)
    broken = {"image_proj": dict(good["image_proj"]), "ip_adapter": dict(good["ip_adapter"])}
    del broken["ip_adapter"]["1.to_k_ip.weight"]
    broken["image_proj"]["proj_out.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as err:
        check_ip_adapter(broken, tiny_model.pipe.controlnet)
    assert "1 missing (1.to_k_ip.weight)" in str(err.value) and "proj_out.weight: (3, 3) != (64, 64)" in str(err.value)
    with pytest.raises(CheckpointError, match="'image_proj' and 'ip_adapter'"):
        check_ip_adapter({"state_dict": {}}, unet)


def test_missing_weights_say_what_and_how(tmp_path):
    spec = ModelSpec("offline", base=str(tmp_path / "sdxl"), identitynet="InstantX/InstantID", ip_adapter="InstantX/InstantID")
    missing = missing_weights(spec)
    assert len(missing) == 3
    assert f"local folder {tmp_path / 'sdxl'} has no model_index.json" in missing[0]
    assert "huggingface-cli download InstantX/InstantID --include 'ControlNetModel/*'" in missing[1]
    assert "huggingface-cli download InstantX/InstantID ip-adapter.bin" in missing[2]
    with pytest.raises(MissingWeightsError, match="model 'offline' is missing weights"):
        load_instantid(spec, "cpu")


def test_settings_are_validated():
    with pytest.raises(ValueError, match="λ"):
        dataclasses.replace(S, ip_scale=2.0).validate()
    with pytest.raises(ValueError, match="multiple of 8"):
        dataclasses.replace(S, width=65).validate()
    assert ResamplerShape().num_queries == 16


def test_reduced_precision_pipeline_generates(tiny_spec):
    """The dtype a GPU runs (fp16 there; bf16 is what the CPU can run): the face embedding reaches the
    Resampler in the pipeline's dtype, λ still steers, the face mask still applies."""
    model = load_instantid(tiny_spec, "cpu", dtype=torch.bfloat16)
    assert model.pipe.unet.dtype == torch.bfloat16
    a = pixels(model(EMB, kps_image(), S))
    b = pixels(model(EMB, kps_image(), dataclasses.replace(S, ip_scale=0.0)))
    assert np.abs(a - b).mean() > 1.0
    masked = model(EMB, kps_image(), dataclasses.replace(S, face_region_only=True), mask=torch.ones(64, 64))
    assert np.asarray(masked).shape == (64, 64, 3)
