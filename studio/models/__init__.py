"""FaceID model families on a shared SDXL base: what is common to them, and each family in its package.

``spec`` (which model is which), ``hub`` (finding and fetching weights), ``base`` (the shared
SDXL base), ``settings`` (per-request settings, styles, schedulers), ``cache`` (loaded models),
``errors``, ``family`` (the interface every family offers) and ``registry``; ``instantid/`` is the
first family. ``generate`` turns a reference face and a prompt into images with the registered
models, and ``zerogpu`` attaches a GPU to it on a ZeroGPU Space. The rest of the studio imports
from here.
"""
from __future__ import annotations

from .base import SharedBase, env_dtype, load_base, pick_device
from .cache import ModelCache
from .errors import CheckpointError, MissingWeightsError, OutOfMemory
from .family import Family
from .hub import (DOWNLOADS, LCM_LORA_SDXL, SDXL_BASE, download_weights, hf_command, local_base_dir, missing_base,
                  missing_lcm_lora)
from .instantid import (SDXL_UNET_CONFIG, InstantID, ResamplerShape, check_ip_adapter, copy_ip_adapter_state_,
                        init_ip_adapter_state, ip_adapter_layout, ip_adapter_state_dict, load_instantid,
                        load_ip_adapter_state, local_identitynet_dir, local_ip_adapter_file, missing_weights,
                        route_face_tokens)
from .registry import FAMILIES, family_of
from .settings import (DEFAULT_STYLE, DEMO_NEGATIVE_PROMPT, FAST_GUIDANCE, FAST_STEPS, SCHEDULERS, STYLES,
                       GenerationSettings, apply_style, make_scheduler, photo_framing)
from .spec import CROSSFACEID_REPO, DEFAULT_MODELS, INSTANTID_REPO, RELEASED_FACE_PACK, ModelSpec

__all__ = ["CROSSFACEID_REPO", "DEFAULT_MODELS", "INSTANTID_REPO", "RELEASED_FACE_PACK", "DEFAULT_STYLE", "DEMO_NEGATIVE_PROMPT", "DOWNLOADS", "FAMILIES", "FAST_GUIDANCE",
           "FAST_STEPS", "LCM_LORA_SDXL", "SCHEDULERS", "SDXL_BASE", "SDXL_UNET_CONFIG", "STYLES", "CheckpointError",
           "Family", "GenerationSettings", "InstantID", "MissingWeightsError", "ModelCache", "ModelSpec", "OutOfMemory",
           "ResamplerShape", "SharedBase", "apply_style", "check_ip_adapter", "copy_ip_adapter_state_",
           "download_weights", "env_dtype", "family_of", "hf_command", "init_ip_adapter_state", "ip_adapter_layout",
           "ip_adapter_state_dict", "load_base", "load_instantid", "load_ip_adapter_state", "local_base_dir",
           "local_identitynet_dir", "local_ip_adapter_file", "make_scheduler", "missing_base", "missing_lcm_lora",
           "missing_weights", "photo_framing", "pick_device", "route_face_tokens"]
