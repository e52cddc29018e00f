"""IP-Adapter-FaceID's release layout to and from diffusers' modules, a fresh adapter, and saving one.

diffusers loads the release into ``IPAdapterFaceIDImageProjection`` (``ff.net.0.proj``, ``ff.net.2``,
``norm``) and IP attention processors; the inverse here saves a fine-tuned adapter as the release is.
"""
from __future__ import annotations

from pathlib import Path

from ..adapter import copy_ip_layers_, ip_layers_from_attention, ip_layers_state
from .layout import FACEID_FILE, ProjShape

#: (release key, diffusers key) of the face projection
PROJ_KEYS = (("proj.0.weight", "ff.net.0.proj.weight"), ("proj.0.bias", "ff.net.0.proj.bias"),
             ("proj.2.weight", "ff.net.2.weight"), ("proj.2.bias", "ff.net.2.bias"),
             ("norm.weight", "norm.weight"), ("norm.bias", "norm.bias"))


def faceid_state_dict(unet) -> dict:
    """The face projection and IP layers of a UNet with a loaded FaceID adapter, in the release layout (copies)."""
    ours = unet.encoder_hid_proj.image_projection_layers[0].state_dict()
    return {"image_proj": {off: ours[on].detach().clone() for off, on in PROJ_KEYS}, "ip_adapter": ip_layers_state(unet)}


def copy_faceid_state_(unet, state: dict) -> None:
    """Copy a release-layout state into the UNet's loaded FaceID modules in place (optimizers keep them)."""
    import torch

    params = unet.encoder_hid_proj.image_projection_layers[0].state_dict()
    with torch.no_grad():
        for off, on in PROJ_KEYS:
            params[on].copy_(state["image_proj"][off])
        copy_ip_layers_(unet, state["ip_adapter"])


def init_faceid_state(unet, shape: ProjShape = ProjShape(), seed: int = 0) -> dict:
    """A fresh adapter for a base UNet: a newly initialised face projection, and ``to_k_ip``/``to_v_ip``
    copied from each cross-attention's ``to_k``/``to_v`` (how IP-Adapter starts its training)."""
    import torch
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

    torch.manual_seed(seed)
    proj = IPAdapterFaceIDImageProjection(image_embed_dim=shape.embed_dims, cross_attention_dim=unet.config.cross_attention_dim,
                                          mult=shape.mult, num_tokens=shape.num_tokens)
    ours = proj.state_dict()
    return {"image_proj": {off: ours[on].detach().clone() for off, on in PROJ_KEYS},
            "ip_adapter": ip_layers_from_attention(unet)}


def save_official(out: Path, unet, identitynet=None, carry: dict | None = None) -> None:
    """A trained FaceID adapter as the release saves it: ``ip-adapter-faceid_sdxl.bin`` with ``image_proj``
    and ``ip_adapter``. ``carry``: ``ip_adapter`` keys trained by nobody (the release's LoRA), kept as they
    were so the release's own loader, which loads every key, finds them. There is no IdentityNet."""
    import torch

    state = faceid_state_dict(unet)
    state["ip_adapter"] = {**(carry or {}), **state["ip_adapter"]}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / FACEID_FILE)
