"""Assembling InstantID on diffusers: SDXL + IdentityNet (a ControlNetModel) + the IP-adapter, checked
and loaded with diffusers' own loader, on a shared SDXL base or its own."""
from __future__ import annotations

from ..adapter import install_adapter, load_ip_adapter_state, prepare_load
from ..base import SharedBase
from ..spec import ModelSpec
from .layout import check_ip_adapter
from .pipeline import InstantID
from .weights import local_identitynet_dir, local_ip_adapter_file, missing_weights


def load_instantid(spec: ModelSpec, device: str | None = None, dtype=None, base: SharedBase | None = None,
                   offload: bool = False, vae_tiling: bool = False) -> InstantID:
    """Assemble SDXL + IdentityNet + IP-adapter from hub ids or local paths (fp16 on GPU, fp32 on CPU).

    ``base``: an SDXL already in memory to build on (see :class:`ModelCache`); ``offload``:
    diffusers' model CPU offload, for 12-16 GB GPUs (needs an accelerator).
    """
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    dev, dtype, base = prepare_load(spec, missing_weights(spec), device, dtype, base, offload, vae_tiling)
    state = load_ip_adapter_state(local_ip_adapter_file(spec.ip_adapter))
    check_ip_adapter(state, base.components["unet"])
    # our own runs save fp32 weights; the loader keeps a checkpoint's dtype, the pipeline runs in ``dtype``
    state = {part: {k: v.to(dtype) for k, v in d.items()} for part, d in state.items()}
    controlnet = ControlNetModel.from_pretrained(str(local_identitynet_dir(spec.identitynet)), dtype=dtype)
    pipe = StableDiffusionXLControlNetPipeline(**base.components, controlnet=controlnet,
                                               force_zeros_for_empty_prompt=base.force_zeros_for_empty_prompt)
    return InstantID(pipe, spec, install_adapter(pipe, base, state, dev, offload), base)
