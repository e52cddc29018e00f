"""Assembling IP-Adapter-FaceID on diffusers: SDXL + the FaceID adapter, checked and loaded with
diffusers' own loader (and the adapter's LoRA with its LoRA loader), on a shared SDXL base or its own."""
from __future__ import annotations

from ..adapter import install_adapter, load_ip_adapter_state, prepare_load
from ..base import SharedBase
from ..spec import ModelSpec
from .layout import EMBEDDED, LORA_KEY, check_faceid
from .pipeline import FaceID
from .weights import local_faceid_file, local_lora_file, missing_weights


def load_faceid(spec: ModelSpec, device: str | None = None, dtype=None, base: SharedBase | None = None,
                offload: bool = False, vae_tiling: bool = False) -> FaceID:
    """The stock SDXL pipeline with the FaceID adapter from hub ids or local paths (fp16 on GPU, fp32 on CPU)."""
    from diffusers import StableDiffusionXLPipeline

    dev, dtype, base = prepare_load(spec, missing_weights(spec), device, dtype, base, offload, vae_tiling)
    state = load_ip_adapter_state(local_faceid_file(spec.ip_adapter))
    check_faceid(state, base.components["unet"])
    state = {part: {k: v.to(dtype) for k, v in d.items() if spec.lora == EMBEDDED or not LORA_KEY.fullmatch(k)}
             for part, d in state.items()}
    pipe = StableDiffusionXLPipeline(**base.components, force_zeros_for_empty_prompt=base.force_zeros_for_empty_prompt)
    if spec.lora and base.models:
        raise ValueError(f"model '{spec.name}' brings a LoRA into the UNet: load it on an SDXL base of its own")
    if spec.lora and spec.lora != EMBEDDED:
        f = local_lora_file(spec.lora)
        pipe.load_lora_weights(str(f.parent), weight_name=f.name, adapter_name="faceid")
    slot = install_adapter(pipe, base, state, dev, offload)  # an embedded LoRA: diffusers loads it as faceid_0
    own_lora = None if not spec.lora else "faceid_0" if spec.lora == EMBEDDED else "faceid"
    return FaceID(pipe, spec, slot, base, own_lora=own_lora)
