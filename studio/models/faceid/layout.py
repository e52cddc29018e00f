"""IP-Adapter-FaceID's checkpoint layout (SDXL): the file names of the release, the shapes of its
``image_proj`` (the face projection) and ``ip_adapter`` (decoupled cross-attention) parts, and the check
that names what does not fit a UNet.

The face projection maps the 512-d ArcFace embedding through Linear(512, 1024), GELU and
Linear(1024, 4 x D) to 4 tokens of the UNet's context width D, then a LayerNorm; every cross-attention
layer n (numbered 1, 3, 5, ... over the UNet's attention processors, as the release numbers them) has
``to_k_ip`` and ``to_v_ip`` of shape (width, D). The release also carries a LoRA of rank 128 in
``ip_adapter`` (``{n}.to_q_lora.down.weight``, ...), which diffusers' ``load_ip_adapter`` loads as a
PEFT adapter when the keys are there: the studio passes them on only for a model that asks for it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..adapter import layout_problems
from ..errors import CheckpointError

FACEID_FILE = "ip-adapter-faceid_sdxl.bin"
FACEID_LORA_FILE = "ip-adapter-faceid_sdxl_lora.safetensors"
#: the release's LoRA keys inside ``ip_adapter`` (loaded only for a model whose ``lora`` is "embedded")
LORA_KEY = re.compile(r"\d+\.to_(q|k|v|out)_lora\.(down|up)\.weight")
#: ``ModelSpec.lora`` for the LoRA the adapter file carries (the release's way)
EMBEDDED = "embedded"


@dataclass(frozen=True)
class ProjShape:
    """The face projection: ``embed_dims`` -> ``embed_dims * mult`` -> ``num_tokens`` tokens."""

    embed_dims: int = 512
    mult: int = 2
    num_tokens: int = 4


def cross_attention_widths(unet) -> list[int]:
    """The width of each cross-attention layer, in the UNet's processor order (the release's numbering)."""
    channels = list(unet.config.block_out_channels)
    out = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or name.startswith("encoder_hid_proj"):
            continue  # self-attention, or an adapter's own modules once one is loaded
        if name.startswith("mid_block"):
            out.append(channels[-1])
        elif name.startswith("up_blocks"):
            out.append(list(reversed(channels))[int(name.split(".")[1])])
        else:
            out.append(channels[int(name.split(".")[1])])
    return out


def faceid_layout(unet, shape: ProjShape = ProjShape()) -> dict[str, dict[str, tuple[int, ...]]]:
    """Key -> shape of an IP-Adapter-FaceID checkpoint for ``unet`` (LoRA keys left out; works on meta)."""
    d, hidden = unet.config.cross_attention_dim, shape.embed_dims * shape.mult
    proj = {"proj.0.weight": (hidden, shape.embed_dims), "proj.0.bias": (hidden,),
            "proj.2.weight": (d * shape.num_tokens, hidden), "proj.2.bias": (d * shape.num_tokens,),
            "norm.weight": (d,), "norm.bias": (d,)}
    ip = {}
    for i, width in enumerate(cross_attention_widths(unet)):
        ip[f"{2 * i + 1}.to_k_ip.weight"] = (width, d)
        ip[f"{2 * i + 1}.to_v_ip.weight"] = (width, d)
    return {"image_proj": proj, "ip_adapter": ip}


def check_faceid(state_dict: dict, unet) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys."""
    if not isinstance(state_dict, dict) or not {"image_proj", "ip_adapter"} <= set(state_dict):
        got = sorted(state_dict)[:5] if isinstance(state_dict, dict) else type(state_dict).__name__
        raise CheckpointError(f"an IP-Adapter-FaceID checkpoint has 'image_proj' and 'ip_adapter' parts; got {got}")
    proj = state_dict["image_proj"]
    if "proj.0.weight" not in proj or "norm.weight" not in proj:
        raise CheckpointError("image_proj lacks 'proj.0.weight' or 'norm.weight': not an IP-Adapter-FaceID projection")
    hidden, embed = proj["proj.0.weight"].shape
    tokens = proj["proj.2.weight"].shape[0] // unet.config.cross_attention_dim if "proj.2.weight" in proj else 4
    expected = faceid_layout(unet, ProjShape(embed_dims=embed, mult=max(1, hidden // embed), num_tokens=tokens))
    problems = layout_problems(state_dict, expected, lambda part, k: part == "ip_adapter" and bool(LORA_KEY.fullmatch(k)))
    if problems:
        raise CheckpointError("IP-Adapter-FaceID checkpoint does not fit this UNet: " + "; ".join(problems))
