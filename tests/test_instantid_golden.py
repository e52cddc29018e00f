"""Keeps diffusers honest: InstantID's Resampler and IP attention, written here from the published
equations, against the modules diffusers builds from a checkpoint in the official key layout.

Weights are random but full-size (Resampler 512 -> 16 x 1280 -> 2048, depth 4, 20 heads of 64;
IP attention at SDXL's widths: query 640/1280, context 2048). The UNet is SDXL 1.0's config with
one transformer layer per block (same attention shapes, fewer layers), built on the meta device
so only the converted IP-adapter modules hold memory.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from studio.models import SDXL_UNET_CONFIG, ip_adapter_layout

TOL = 1e-5


def _random_state(layout: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for part, keys in layout.items():
        state[part] = {}
        for k, shape in keys.items():
            t = torch.randn(shape, generator=g)
            if len(shape) == 1:  # LayerNorm gains near 1, biases near 0, as trained ones are
                t = 1.0 + 0.1 * t if k.endswith("weight") else 0.02 * t
            elif k != "latents":
                t = t / math.sqrt(shape[-1])
            state[part][k] = t
    return state


def _meta_unet():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel.from_config({**SDXL_UNET_CONFIG, "transformer_layers_per_block": [1, 1, 1]})


def _heads(t: torch.Tensor, n: int) -> torch.Tensor:
    b, length, _ = t.shape
    return t.reshape(b, length, n, -1).transpose(1, 2)  # (B, heads, tokens, dim_head)


def _attend(q, k, v):
    """softmax(Q K^T / sqrt(d)) V, per head."""
    d = q.shape[-1]
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v


def _merge(t: torch.Tensor) -> torch.Tensor:
    b, h, length, d = t.shape
    return t.transpose(1, 2).reshape(b, length, h * d)


def resampler_reference(p: dict, x: torch.Tensor, heads: int, depth: int) -> torch.Tensor:
    """Perceiver resampler: learned latents attend to [input tokens; latents], then a GELU MLP,
    both residual; finally a projection to the UNet's context width and a LayerNorm."""
    def ln(t, name):
        return F.layer_norm(t, (t.shape[-1],), p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-5)

    x = x @ p["proj_in.weight"].T + p["proj_in.bias"]
    latents = p["latents"].expand(x.shape[0], -1, -1)
    for i in range(depth):
        xn, ln_lat = ln(x, f"layers.{i}.0.norm1"), ln(latents, f"layers.{i}.0.norm2")
        q = ln_lat @ p[f"layers.{i}.0.to_q.weight"].T
        k, v = (torch.cat([xn, ln_lat], dim=1) @ p[f"layers.{i}.0.to_kv.weight"].T).chunk(2, dim=-1)
        out = _merge(_attend(_heads(q, heads), _heads(k, heads), _heads(v, heads)))
        latents = out @ p[f"layers.{i}.0.to_out.weight"].T + latents
        h = F.gelu(ln(latents, f"layers.{i}.1.0") @ p[f"layers.{i}.1.1.weight"].T)
        latents = h @ p[f"layers.{i}.1.3.weight"].T + latents
    return ln(latents @ p["proj_out.weight"].T + p["proj_out.bias"], "norm_out")


def test_resampler_matches_the_equations():
    unet = _meta_unet()
    state = _random_state(ip_adapter_layout(unet))
    proj = unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"], low_cpu_mem_usage=False).float()
    # the configuration diffusers derives from the checkpoint is InstantID's
    assert len(proj.layers) == 4
    attn = proj.layers[0].attn
    assert attn.heads == 20 and attn.inner_dim // attn.heads == 64
    assert proj.latents.shape == (1, 16, 1280) and proj.proj_in.weight.shape == (1280, 512)
    assert proj.proj_out.weight.shape == (2048, 1280)
    x = torch.randn(3, 1, 512, generator=torch.Generator().manual_seed(1))  # norm ~22, like raw ArcFace embeddings
    with torch.no_grad():
        ours = proj(x)
    expected = resampler_reference(state["image_proj"], x, heads=20, depth=4)
    assert ours.shape == (3, 16, 2048)
    assert (ours - expected).abs().max().item() <= TOL
    # and the check could fail: one changed weight moves the output beyond the tolerance
    bent = {k: v.clone() for k, v in state["image_proj"].items()}
    bent["layers.2.0.to_q.weight"][0, 0] += 0.5
    assert (ours - resampler_reference(bent, x, heads=20, depth=4)).abs().max().item() > 100 * TOL


def test_ip_attention_matches_the_equations():
    """Z = Attn(Q, K, V) + λ · Attn(Q, K', V'), with K', V' from the face tokens through to_k_ip / to_v_ip."""
    from diffusers.models.attention_processor import Attention

    unet = _meta_unet()
    state = _random_state(ip_adapter_layout(unet), seed=2)
    procs = unet._convert_ip_adapter_attn_to_diffusers([state], low_cpu_mem_usage=False)
    cross = [name for name in unet.attn_processors if not name.endswith("attn1.processor")]
    assert len(cross) == 11 and len(state["ip_adapter"]) == 22
    g = torch.Generator().manual_seed(3)
    for name, width in (("mid_block", 1280), ("down_blocks.1", 640)):
        j = next(i for i, n in enumerate(cross) if n.startswith(name))
        proc = procs[cross[j]].float()
        key = 2 * j + 1  # the official numbering: 1, 3, 5, ... over cross-attention layers in order
        wk_ip, wv_ip = state["ip_adapter"][f"{key}.to_k_ip.weight"], state["ip_adapter"][f"{key}.to_v_ip.weight"]
        assert proc.to_k_ip[0].weight.shape == (width, 2048) and proc.num_tokens == [16]
        heads = width // 64
        attn = Attention(query_dim=width, cross_attention_dim=2048, heads=heads, dim_head=64, bias=False, out_bias=True)
        with torch.no_grad():
            for lin in (attn.to_q, attn.to_k, attn.to_v, attn.to_out[0]):
                lin.weight.normal_(0, 1 / math.sqrt(lin.weight.shape[1]), generator=g)
            attn.to_out[0].bias.normal_(0, 0.02, generator=g)
        x = torch.randn(2, 64, width, generator=g)
        text = torch.randn(2, 77, 2048, generator=g)
        face = torch.randn(2, 16, 2048, generator=g)
        for lam in (0.0, 0.5, 1.0):
            proc.scale = [lam]
            with torch.no_grad():
                ours = proc(attn, x, encoder_hidden_states=(text, [face]))
                q = _heads(x @ attn.to_q.weight.T, heads)
                z = _attend(q, _heads(text @ attn.to_k.weight.T, heads), _heads(text @ attn.to_v.weight.T, heads))
                z = z + lam * _attend(q, _heads(face @ wk_ip.T, heads), _heads(face @ wv_ip.T, heads))
                expected = _merge(z) @ attn.to_out[0].weight.T + attn.to_out[0].bias
            assert (ours - expected).abs().max().item() <= TOL, (name, lam)
