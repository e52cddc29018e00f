"""InstantID's checkpoint layout: where its files are, the shapes of ``ip-adapter.bin``, and the check
that names what does not fit a UNet."""
from __future__ import annotations

from dataclasses import dataclass

from ..adapter import layout_problems
from ..errors import CheckpointError

IP_ADAPTER_FILE = "ip-adapter.bin"
IDENTITYNET_SUBFOLDER = "ControlNetModel"
#: The paper's release saves the adapter as ``pytorch_model.bin`` next to a ``controlnet/`` folder.
RELEASE_IP_ADAPTER_FILE = "pytorch_model.bin"
RELEASE_IDENTITYNET_SUBFOLDER = "controlnet"

#: The SDXL 1.0 UNet architecture (its config.json), to check checkpoints against the full-size
#: model without downloading or allocating it.
SDXL_UNET_CONFIG = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


@dataclass(frozen=True)
class ResamplerShape:
    """InstantID's face Resampler: 512-d ArcFace embedding -> 16 tokens of the UNet's context width."""

    embed_dims: int = 512
    hidden_dims: int = 1280
    depth: int = 4
    dim_head: int = 64
    num_queries: int = 16
    ff_mult: int = 4


def ip_adapter_layout(unet, shape: ResamplerShape = ResamplerShape()) -> dict[str, dict[str, tuple[int, ...]]]:
    """Key -> shape of an official InstantID ``ip-adapter.bin`` for ``unet`` (works on the meta device).

    ``image_proj``: the Resampler; ``ip_adapter``: ``{n}.to_k_ip.weight`` / ``{n}.to_v_ip.weight``
    for every cross-attention layer, numbered 1, 3, 5, ... in the UNet's processor order.
    """
    cfg = unet.config
    h, out, inner = shape.hidden_dims, cfg.cross_attention_dim, (shape.hidden_dims // shape.dim_head) * shape.dim_head
    proj: dict[str, tuple[int, ...]] = {
        "latents": (1, shape.num_queries, h), "proj_in.weight": (h, shape.embed_dims), "proj_in.bias": (h,),
        "proj_out.weight": (out, h), "proj_out.bias": (out,), "norm_out.weight": (out,), "norm_out.bias": (out,),
    }
    for i in range(shape.depth):
        for norm in ("norm1", "norm2"):
            proj[f"layers.{i}.0.{norm}.weight"] = (h,)
            proj[f"layers.{i}.0.{norm}.bias"] = (h,)
        proj[f"layers.{i}.0.to_q.weight"] = (inner, h)
        proj[f"layers.{i}.0.to_kv.weight"] = (2 * inner, h)
        proj[f"layers.{i}.0.to_out.weight"] = (h, inner)
        proj[f"layers.{i}.1.0.weight"] = (h,)
        proj[f"layers.{i}.1.0.bias"] = (h,)
        proj[f"layers.{i}.1.1.weight"] = (h * shape.ff_mult, h)
        proj[f"layers.{i}.1.3.weight"] = (h, h * shape.ff_mult)
    ip: dict[str, tuple[int, ...]] = {}
    key_id = 1
    channels = list(cfg.block_out_channels)
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or name.startswith("encoder_hid_proj"):
            continue  # self-attention, or the Resampler's own attention once an adapter is loaded
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        ip[f"{key_id}.to_k_ip.weight"] = (hidden, out)
        ip[f"{key_id}.to_v_ip.weight"] = (hidden, out)
        key_id += 2
    return {"image_proj": proj, "ip_adapter": ip}


def check_ip_adapter(state_dict: dict, unet, shape: ResamplerShape | None = None) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys."""
    if not isinstance(state_dict, dict) or not {"image_proj", "ip_adapter"} <= set(state_dict):
        got = sorted(state_dict)[:5] if isinstance(state_dict, dict) else type(state_dict).__name__
        raise CheckpointError(f"an InstantID ip-adapter has 'image_proj' and 'ip_adapter' parts; got {got}")
    if shape is None:  # read the Resampler's size from the checkpoint itself
        lat = state_dict["image_proj"].get("latents")
        pin = state_dict["image_proj"].get("proj_in.weight")
        depth = len({k.split(".")[1] for k in state_dict["image_proj"] if k.startswith("layers.")})
        if lat is None or pin is None:
            raise CheckpointError("image_proj lacks 'latents' or 'proj_in.weight': not an InstantID Resampler")
        shape = ResamplerShape(embed_dims=pin.shape[1], hidden_dims=lat.shape[2], depth=depth, num_queries=lat.shape[1])
    expected = ip_adapter_layout(unet, shape)
    problems = layout_problems(state_dict, expected)
    if problems:
        raise CheckpointError("ip-adapter does not fit this UNet: " + "; ".join(problems))
