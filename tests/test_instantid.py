"""InstantID on diffusers with tiny weights loaded through the production loader."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from studio.models import (SDXL_UNET_CONFIG, STYLES, CheckpointError, GenerationSettings, MissingWeightsError,
                           ModelCache, ModelSpec, OutOfMemory, ResamplerShape, apply_style, check_ip_adapter,
                           ip_adapter_layout, load_instantid, missing_weights, photo_framing, route_face_tokens)

S = GenerationSettings(prompt="a smiling person", steps=2, width=64, height=64, guidance=5.0, seed=3)
EMB = np.random.default_rng(0).normal(size=512).astype(np.float32) * 8


def kps_image():
    from studio.dataset.draw import draw_kps

    return draw_kps(64, 64, [[22, 26], [42, 26], [32, 36], [24, 46], [40, 46]], radius=3, stick_width=1)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


@pytest.fixture(scope="module")
def models_by_dtype(tiny_spec):
    """The tiny model in float32 and in bfloat16 (the reduced precision a GPU runs, as the CPU can run it)."""
    return {"float32": load_instantid(tiny_spec, "cpu"), "bfloat16": load_instantid(tiny_spec, "cpu", dtype=torch.bfloat16)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lambda_changes_the_output(models_by_dtype, dtype):
    model = models_by_dtype[dtype]
    a = pixels(model(EMB, kps_image(), S))
    b = pixels(model(EMB, kps_image(), dataclasses.replace(S, ip_scale=0.0)))
    assert np.abs(a - b).mean() > 1.0
    again = pixels(model(EMB, kps_image(), S))
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
        plain = pipe(prompt=S.prompt, negative_prompt=S.negative_prompt, image=kps_image(),
                     controlnet_conditioning_scale=S.identitynet_scale,
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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_face_region_masks_identitynet_and_face_attention(models_by_dtype, dtype):
    """As the official demo's "enhance face region": outside the mask neither the IdentityNet nor the
    λ term acts. An empty mask is the same as no IdentityNet AND λ = 0 (with the residual-only mask
    of before, λ still acted: this failed)."""
    model = models_by_dtype[dtype]
    full = pixels(model(EMB, kps_image(), S))
    region = dataclasses.replace(S, face_region_only=True)
    masked = pixels(model(EMB, kps_image(), region, mask=torch.zeros(64, 64)))
    neither = pixels(model(EMB, kps_image(), dataclasses.replace(S, identitynet_scale=0.0, ip_scale=0.0)))
    only_cn_off = pixels(model(EMB, kps_image(), dataclasses.replace(S, identitynet_scale=0.0)))
    assert np.abs(full - masked).mean() > 0.1
    np.testing.assert_array_equal(masked, neither)
    assert np.abs(masked - only_cn_off).mean() > 0.5  # the face attention was masked too
    everywhere = pixels(model(EMB, kps_image(), region, mask=torch.ones(64, 64)))
    assert np.abs(everywhere - full).max() <= (2 if dtype == "bfloat16" else 1)  # a full mask changes nothing


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
    """`hf download` with filters (huggingface-cli is no longer installed), both release layouts named."""
    spec = ModelSpec("offline", base=str(tmp_path / "sdxl"), identitynet="InstantX/InstantID", ip_adapter="InstantX/InstantID")
    missing = missing_weights(spec)
    assert len(missing) == 3 and not any("huggingface-cli" in m for m in missing)
    assert f"local folder {tmp_path / 'sdxl'} has no model_index.json" in missing[0]
    assert "hf download InstantX/InstantID --include 'ControlNetModel/*' 'controlnet/*'" in missing[1]
    assert "hf download InstantX/InstantID --include 'ip-adapter.bin' 'pytorch_model.bin'" in missing[2]
    assert "hub cache" in missing[1]
    hub = missing_weights(ModelSpec("hub"))[0]
    assert ("hf download stabilityai/stable-diffusion-xl-base-1.0 --include 'model_index.json'" in hub
            and "'unet/diffusion_pytorch_model.fp16.safetensors'" in hub and "models --download sdxl" in hub)
    with pytest.raises(MissingWeightsError, match="model 'offline' is missing weights"):
        load_instantid(spec, "cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    named = missing_weights(ModelSpec("folder", base=str(tmp_path / "sdxl"), identitynet=str(empty), ip_adapter=str(empty)))
    assert "ControlNetModel/config.json (InstantID layout) or controlnet/config.json (CrossFaceID release layout)" in named[1]
    assert "neither ip-adapter.bin (InstantID layout) nor pytorch_model.bin (CrossFaceID release layout)" in named[2]


@pytest.mark.slow
def test_crossfaceid_release_layout_loads(tiny_spec, tmp_path):
    """The paper's training script saves pytorch_model.bin + controlnet/: loaded like the InstantID layout."""
    import shutil
    from pathlib import Path

    release = tmp_path / "release"
    shutil.copytree(Path(tiny_spec.identitynet) / "ControlNetModel", release / "controlnet")
    shutil.copy(tiny_spec.ip_adapter, release / "pytorch_model.bin")
    assert missing_weights(ModelSpec("r", base=tiny_spec.base, identitynet=str(release), ip_adapter=str(release))) == []
    ours = load_instantid(ModelSpec("r", base=tiny_spec.base, identitynet=str(release), ip_adapter=str(release)), "cpu")
    theirs = load_instantid(tiny_spec, "cpu")
    np.testing.assert_array_equal(pixels(ours(EMB, kps_image(), S)), pixels(theirs(EMB, kps_image(), S)))
    # a flat state dict ("image_proj.<key>") in that file is read as well
    state = torch.load(tiny_spec.ip_adapter, weights_only=True)
    torch.save({f"{part}.{k}": v for part, d in state.items() for k, v in d.items()}, release / "pytorch_model.bin")
    flat = load_instantid(ModelSpec("r", base=tiny_spec.base, identitynet=str(release), ip_adapter=str(release)), "cpu")
    np.testing.assert_array_equal(pixels(flat(EMB, kps_image(), S)), pixels(theirs(EMB, kps_image(), S)))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="λ"):
        dataclasses.replace(S, ip_scale=2.0).validate()
    with pytest.raises(ValueError, match="multiple of 8"):
        dataclasses.replace(S, width=65).validate()
    with pytest.raises(ValueError, match="both width and height"):
        dataclasses.replace(S, height=None).validate()
    with pytest.raises(ValueError, match="unknown style 'Oil'"):
        dataclasses.replace(S, style="Oil").validate()
    with pytest.raises(ValueError, match="unknown scheduler"):
        dataclasses.replace(S, scheduler="DDIM").validate()
    with pytest.raises(ValueError, match="long side must be a multiple of 64"):
        dataclasses.replace(S, width=None, height=None, long_side=1000).validate()
    assert ResamplerShape().num_queries == 16


def test_demo_defaults():
    """Where the paper is silent, the official demo's defaults: its negative prompt, 0.8 / 0.8, 30 steps, CFG 5,
    the photo's framing at long side 1280, no margin around the face region, Euler."""
    d = GenerationSettings(prompt="x")
    assert d.negative_prompt.startswith("(lowres, low quality, worst quality:1.2)") and "watermark" in d.negative_prompt
    assert (d.ip_scale, d.identitynet_scale, d.steps, d.guidance) == (0.8, 0.8, 30, 5.0)
    assert (d.width, d.height, d.long_side, d.face_margin, d.scheduler) == (None, None, 1280, 0.0, "Euler")


def test_photo_framing_is_the_demos():
    """Long side 1280, multiples of 64, aspect kept (the demo's rounding: short side to 1024 first)."""
    assert photo_framing(1000, 1000) == (1280, 1280)
    assert photo_framing(3024, 4032) == (960, 1280)  # a phone photo, portrait
    assert photo_framing(1920, 1080) == (1280, 704)
    assert photo_framing(600, 800, long_side=128) == (64, 128)
    assert photo_framing(50, 4000, long_side=128) == (64, 128)  # never a zero side


def test_styles_wrap_the_prompt():
    p, n = apply_style("Film Noir", "a man smiling", "blurry")
    assert "a man smiling" in p and p != "a man smiling" and n.endswith("blurry") and n != "blurry"
    assert apply_style("(No style)", "a man", "") == ("a man", "")
    assert len(STYLES) == 9 and "Watercolor" in STYLES and "Line art" in STYLES


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_schedulers_and_fast_mode(models_by_dtype, dtype):
    """Euler (default), DPM++ 2M Karras and fast mode (LCM-LoRA through diffusers' LoRA loader + LCM);
    the LoRA acts only in fast mode: a normal call afterwards gives the same image as before."""
    model = models_by_dtype[dtype]
    euler = pixels(model(EMB, kps_image(), S))
    dpm = pixels(model(EMB, kps_image(), dataclasses.replace(S, scheduler="DPM++ 2M Karras")))
    assert np.abs(euler - dpm).mean() > 0.5
    fast = dataclasses.replace(S, scheduler="LCM", steps=2, guidance=1.5)
    lcm = pixels(model(EMB, kps_image(), fast))
    assert model.base.lcm_lora == model.spec.lcm_lora
    assert type(model.pipe.scheduler).__name__ == "LCMScheduler"
    # the LoRA matters: the LCM scheduler with the LoRA switched off gives another image
    model.pipe.disable_lora()
    embeds = model.embeds(EMB, True).to(model.pipe.unet.dtype)
    with torch.inference_mode(), route_face_tokens(model.pipe.controlnet, model.face_tokens(embeds)):
        no_lora = model.pipe(prompt=S.prompt, negative_prompt=S.negative_prompt, image=kps_image(),
                             controlnet_conditioning_scale=0.8, ip_adapter_image_embeds=[embeds],
                             num_inference_steps=2, guidance_scale=1.5, width=64, height=64,
                             generator=torch.Generator().manual_seed(S.seed)).images[0]
    model.pipe.enable_lora()
    with torch.inference_mode(), route_face_tokens(model.pipe.controlnet, model.face_tokens(embeds)):
        with_lora = model.pipe(prompt=S.prompt, negative_prompt=S.negative_prompt, image=kps_image(),
                               controlnet_conditioning_scale=0.8, ip_adapter_image_embeds=[embeds],
                               num_inference_steps=2, guidance_scale=1.5, width=64, height=64,
                               generator=torch.Generator().manual_seed(S.seed)).images[0]
    np.testing.assert_array_equal(pixels(with_lora), lcm)  # fast mode is exactly the stock call with the LoRA on
    assert np.abs(lcm - pixels(no_lora)).mean() > 0.5
    again = pixels(model(EMB, kps_image(), S))  # LoRA off again, Euler again
    if dtype == "float32":
        np.testing.assert_array_equal(again, euler)
    else:
        # In bfloat16 the LoRA-wrapped layers (peft) need not round as the plain layers did: within a few
        # levels (measured: max 4, mean 0.61), while the LoRA's own effect is far larger (LCM: mean 13.4)
        drift = np.abs(again.astype(float) - euler)
        assert drift.max() <= 8 and drift.mean() < 0.1 * np.abs(lcm.astype(float) - euler).mean()
    assert pixels(model(EMB, kps_image(), fast)).tolist() == lcm.tolist()  # loaded once, reused


def test_fast_mode_without_the_lora_says_how_to_get_it(tiny_spec):
    model = load_instantid(dataclasses.replace(tiny_spec, lcm_lora="latent-consistency/lcm-lora-sdxl"), "cpu")
    with pytest.raises(MissingWeightsError, match="hf download latent-consistency/lcm-lora-sdxl --include "
                                                  "'pytorch_lora_weights.safetensors'"):
        model(EMB, kps_image(), dataclasses.replace(S, scheduler="LCM"))
    assert model.base.lcm_lora is None


def test_out_of_memory_is_a_message(tiny_spec):
    """A CUDA out-of-memory error becomes advice (lower the size, offload), and the model keeps working."""
    model = load_instantid(tiny_spec, "cpu")

    def oom(*_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = model.pipe.unet.register_forward_pre_hook(oom)
    with pytest.raises(OutOfMemory, match="ran out of memory generating 64x64 with 'tiny'.*STUDIO_OFFLOAD=model"):
        model(EMB, kps_image(), S)
    hook.remove()
    assert pixels(model(EMB, kps_image(), S)).shape == (64, 64, 3)


@pytest.mark.slow
def test_models_on_one_base_share_it(tiny_spec, tmp_path):
    """Two models on one SDXL base: one UNet, VAE and text encoders in memory; each still generates
    exactly what it generates when loaded alone, in any order (each puts its own adapter in place)."""
    state = torch.load(tiny_spec.ip_adapter, weights_only=True)
    torch.save({part: {k: v * 3 for k, v in d.items()} for part, d in state.items()}, tmp_path / "b.bin")
    spec_b = dataclasses.replace(tiny_spec, name="tiny-b", ip_adapter=str(tmp_path / "b.bin"))
    alone_a = pixels(load_instantid(tiny_spec, "cpu")(EMB, kps_image(), S))
    alone_b = pixels(load_instantid(spec_b, "cpu")(EMB, kps_image(), S))
    assert np.abs(alone_a - alone_b).mean() > 0.5
    cache = ModelCache("cpu")
    a, b = cache.get(tiny_spec), cache.get(spec_b)
    assert a.pipe.unet is b.pipe.unet and a.pipe.vae is b.pipe.vae and a.pipe.text_encoder_2 is b.pipe.text_encoder_2
    assert a.pipe.controlnet is not b.pipe.controlnet and a.adapter.projection is not b.adapter.projection
    unique = {id(p): p.numel() for m in (a.pipe, b.pipe) for part in ("unet", "vae", "text_encoder", "text_encoder_2",
                                                                        "controlnet") for p in getattr(m, part).parameters()}
    one = sum(p.numel() for p in a.pipe.unet.parameters())
    assert sum(unique.values()) < one + 2 * sum(p.numel() for p in a.pipe.controlnet.parameters()) + \
        sum(p.numel() for part in ("vae", "text_encoder", "text_encoder_2") for p in getattr(a.pipe, part).parameters()) + 1
    for model, expected in ((b, alone_b), (a, alone_a), (a, alone_a), (b, alone_b)):
        np.testing.assert_array_equal(pixels(model(EMB, kps_image(), S)), expected)
    assert cache.get(tiny_spec) is a  # cached


def test_model_cache_evicts_least_recently_used_and_never_blocks_on_a_load(tiny_spec, tmp_path):
    import threading
    import time

    specs = [dataclasses.replace(tiny_spec, name=f"m{i}", ip_adapter=tiny_spec.ip_adapter, identitynet=tiny_spec.identitynet,
                                 lcm_lora=str(tmp_path / f"lora{i}")) for i in range(3)]
    cache = ModelCache("cpu", max_models=2)
    m0 = cache.get(specs[0])
    cache.get(specs[1])
    cache.get(specs[0])  # m0 used last: m1 is the least recently used
    cache.get(specs[2])
    assert cache.loaded() == ["m0", "m2"]
    # a load in progress (its lock held) does not keep another request from a loaded model
    key = repr(specs[1].weights_key() | {"lcm_lora": specs[1].lcm_lora})
    lock = cache._key_lock(key)
    lock.acquire()
    try:
        blocked = threading.Thread(target=cache.get, args=(specs[1],), daemon=True)
        blocked.start()
        t = time.perf_counter()
        assert cache.get(specs[0]) is m0
        assert time.perf_counter() - t < 1.0 and blocked.is_alive()
    finally:
        lock.release()
    blocked.join(timeout=60)
    assert sorted(cache.loaded()) == ["m0", "m1"]


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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_on_cuda_in_half_precision_near_the_cpu_image(tiny_spec, dtype):
    """What a GPU runs: the same loader on CUDA in float16 / bfloat16; λ steers, and the image stays near the
    CPU's float32 one (half precision rounds, it does not redraw)."""
    model = load_instantid(tiny_spec, "cuda", dtype=getattr(torch, dtype))
    assert model.pipe.unet.dtype == getattr(torch, dtype) and model.pipe.unet.device.type == "cuda"
    a = pixels(model(EMB, kps_image(), S))
    b = pixels(model(EMB, kps_image(), dataclasses.replace(S, ip_scale=0.0)))
    assert np.abs(a - b).mean() > 1.0
    cpu = pixels(load_instantid(tiny_spec, "cpu")(EMB, kps_image(), S))
    assert np.abs(a - cpu).mean() < np.abs(a - b).mean()  # closer to float32 than to a different λ


def test_memory_options_for_small_gpus(tiny_spec, monkeypatch):
    """VAE tiling is switched on in the loaded VAE; CPU offload needs a GPU and says so; seeds are drawn on the
    pipeline's device (the CPU here; CUDA on a GPU, as the demo draws them)."""
    monkeypatch.setenv("STUDIO_VAE_TILING", "1")
    model = ModelCache("cpu").get(tiny_spec)
    assert model.pipe.vae.use_tiling and model.generator_device == "cpu"
    with pytest.raises(ValueError, match="CPU offload .* needs a GPU"):
        ModelCache("cpu", offload=True).get(tiny_spec)
    monkeypatch.setenv("STUDIO_DTYPE", "float8")
    with pytest.raises(ValueError, match="STUDIO_DTYPE must be float16, bfloat16 or float32"):
        ModelCache("cpu")


def test_the_instantid_family_saves_what_it_loads(tiny_spec, tmp_path):
    """The family interface the studio reaches a model through: weights check, load on a base, save in the
    official layout; what it saves loads back through the same family with the same weights."""
    from studio.models import FAMILIES, family_of, ip_adapter_state_dict

    family = family_of(tiny_spec)
    assert family is FAMILIES["InstantID"] and family.trainable == ("Resampler", "IP-adapter", "IdentityNet")
    assert family.missing_weights(tiny_spec) == []
    assert family.missing_weights(dataclasses.replace(tiny_spec, ip_adapter=str(tmp_path / "none")))  # named, not raised
    model = family.load(tiny_spec, "cpu")
    with torch.no_grad():  # a fine-tuning step's worth of change, so the check cannot pass on the released weights
        model.pipe.controlnet.conv_in.weight.add_(0.5)
        next(iter(model.pipe.unet.encoder_hid_proj.parameters())).add_(0.5)
    family.save_official(tmp_path / "out", model.pipe.unet, model.pipe.controlnet)
    assert (tmp_path / "out" / "ip-adapter.bin").is_file() and (tmp_path / "out" / "ControlNetModel").is_dir()
    again = family.load(dataclasses.replace(tiny_spec, identitynet=str(tmp_path / "out"),
                                            ip_adapter=str(tmp_path / "out")), "cpu")
    saved, loaded = ip_adapter_state_dict(model.pipe.unet), ip_adapter_state_dict(again.pipe.unet)
    for part in ("image_proj", "ip_adapter"):
        assert all(torch.equal(saved[part][k], loaded[part][k]) for k in saved[part])
    assert all(torch.equal(a, b) for a, b in zip(model.pipe.controlnet.state_dict().values(),
                                                  again.pipe.controlnet.state_dict().values()))
    assert pixels(model(EMB, kps_image(), S)).tolist() == pixels(again(EMB, kps_image(), S)).tolist()
