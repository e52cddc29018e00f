"""The SDXL base every FaceID family builds on: loaded once, shared by the models on it."""
from __future__ import annotations

import os
import threading

from .errors import MissingWeightsError
from .hub import local_base_dir


def pick_device(device: str | None = None):
    """The torch device asked for, else CUDA when there is one, else the CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class SharedBase:
    """One SDXL base in memory (UNet, VAE, text encoders) for every model built on it.

    The IP-adapter lives inside the UNet, so models sharing it take turns: each keeps its own
    Resampler and IP attention processors and puts them in place under ``lock`` for its call.
    """

    def __init__(self, components: dict, force_zeros_for_empty_prompt: bool = True):
        self.components = components
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.lock = threading.RLock()
        self.lcm_lora: str | None = None  # the LoRA source loaded into the UNet, if any
        self.models = 0


def load_base(source: str, device: str | None = None, dtype=None, vae_tiling: bool = False) -> SharedBase:
    """SDXL's parts from a hub id or folder (the fp16 variant when only that was downloaded)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    base_dir = local_base_dir(source)
    if base_dir is None or not (base_dir / "model_index.json").exists():
        raise MissingWeightsError(f"SDXL base '{source}' is not on this machine")
    dev = pick_device(device)
    dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    unet_dir = base_dir / "unet"
    variant = ("fp16" if not any(unet_dir.glob("diffusion_pytorch_model.safetensors*"))
               and any(unet_dir.glob("diffusion_pytorch_model.fp16.*")) else None)
    sdxl = StableDiffusionXLPipeline.from_pretrained(str(base_dir), dtype=dtype, variant=variant)
    sdxl.to(dev)
    if vae_tiling:
        sdxl.vae.enable_tiling()
    parts = {k: sdxl.components[k] for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                              "unet", "scheduler")}
    return SharedBase(parts, bool(sdxl.config.get("force_zeros_for_empty_prompt", True)))


def env_dtype():
    """``STUDIO_DTYPE`` (float16 | bfloat16 | float32): the precision models load in (default: fp16 on a GPU).
    torch is imported only when it is set: the app's first page needs no torch."""
    name = os.environ.get("STUDIO_DTYPE", "").strip()
    if not name:
        return None
    if name not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"STUDIO_DTYPE must be float16, bfloat16 or float32, got {name!r}")
    import torch

    return getattr(torch, name)
