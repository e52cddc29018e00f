"""Converting InstantID's official adapter layout to and from diffusers' modules (both ways, so a
fine-tuned adapter is saved as the released models are), and starting a fresh adapter."""
from __future__ import annotations

from pathlib import Path

from ..adapter import copy_ip_layers_, ip_layers_from_attention, ip_layers_state
from .layout import ResamplerShape


def _proj_key_pairs(depth: int) -> list[tuple[str, tuple[str, ...]]]:
    """(official image_proj key, diffusers IPAdapterPlusImageProjection key(s)); ``to_kv`` is split in two."""
    pairs = [(k, (k,)) for k in ("latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias",
                                  "norm_out.weight", "norm_out.bias")]
    for i in range(depth):
        for off, on in (("0.norm1", "ln0"), ("0.norm2", "ln1")):
            pairs += [(f"layers.{i}.{off}.{p}", (f"layers.{i}.{on}.{p}",)) for p in ("weight", "bias")]
        pairs += [(f"layers.{i}.0.to_q.weight", (f"layers.{i}.attn.to_q.weight",)),
                  (f"layers.{i}.0.to_kv.weight", (f"layers.{i}.attn.to_k.weight", f"layers.{i}.attn.to_v.weight")),
                  (f"layers.{i}.0.to_out.weight", (f"layers.{i}.attn.to_out.0.weight",)),
                  (f"layers.{i}.1.0.weight", (f"layers.{i}.ff.0.weight",)),
                  (f"layers.{i}.1.0.bias", (f"layers.{i}.ff.0.bias",)),
                  (f"layers.{i}.1.1.weight", (f"layers.{i}.ff.1.net.0.proj.weight",)),
                  (f"layers.{i}.1.3.weight", (f"layers.{i}.ff.1.net.2.weight",))]
    return pairs


def _official_image_proj(proj) -> dict:
    """A diffusers IPAdapterPlusImageProjection's weights under the official ``image_proj`` keys (copies)."""
    import torch

    ours = proj.state_dict()
    depth = len({k.split(".")[1] for k in ours if k.startswith("layers.")})
    return {off: (torch.cat([ours[k] for k in on]) if len(on) > 1 else ours[on[0]]).detach().clone()
            for off, on in _proj_key_pairs(depth)}


def ip_adapter_state_dict(unet) -> dict:
    """The Resampler and IP layers of a UNet with a loaded IP-adapter, in the official ``ip-adapter.bin`` layout.

    The inverse of diffusers' conversion, so a fine-tuned adapter is saved in the layout the
    released models use and :func:`load_instantid` (or InstantID's own code) reads.
    """
    image_proj = _official_image_proj(unet.encoder_hid_proj.image_projection_layers[0])
    return {"image_proj": image_proj, "ip_adapter": ip_layers_state(unet)}


def copy_ip_adapter_state_(unet, state: dict) -> None:
    """Copy an official-layout state into the UNet's loaded IP-adapter modules in place (optimizers keep them)."""
    import torch

    proj = unet.encoder_hid_proj.image_projection_layers[0]
    params = proj.state_dict()
    depth = len({k.split(".")[1] for k in params if k.startswith("layers.")})
    with torch.no_grad():
        for off, on in _proj_key_pairs(depth):
            parts = state["image_proj"][off].chunk(len(on)) if len(on) > 1 else (state["image_proj"][off],)
            for key, value in zip(on, parts):
                params[key].copy_(value)
        copy_ip_layers_(unet, state["ip_adapter"])


def init_ip_adapter_state(unet, shape: ResamplerShape = ResamplerShape(), seed: int = 0) -> dict:
    """A fresh adapter for a base UNet: a newly initialised Resampler, and ``to_k_ip``/``to_v_ip``
    copied from each cross-attention's ``to_k``/``to_v`` (how IP-Adapter and InstantID start)."""
    import torch
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    torch.manual_seed(seed)
    proj = IPAdapterPlusImageProjection(embed_dims=shape.embed_dims, output_dims=unet.config.cross_attention_dim,
                                        hidden_dims=shape.hidden_dims, depth=shape.depth, dim_head=shape.dim_head,
                                        heads=shape.hidden_dims // shape.dim_head, num_queries=shape.num_queries,
                                        ffn_ratio=shape.ff_mult)
    return {"image_proj": _official_image_proj(proj), "ip_adapter": ip_layers_from_attention(unet)}


def save_official(out: Path, unet, identitynet) -> None:
    """A trained InstantID in the official layout: ``ip-adapter.bin`` and ``ControlNetModel/`` (what
    :func:`~studio.models.instantid.load.load_instantid`, InstantID's own code and the paper's trainer read)."""
    import torch

    from .layout import IDENTITYNET_SUBFOLDER, IP_ADAPTER_FILE

    out.mkdir(parents=True, exist_ok=True)
    torch.save(ip_adapter_state_dict(unet), out / IP_ADAPTER_FILE)
    identitynet.save_pretrained(out / IDENTITYNET_SUBFOLDER)
