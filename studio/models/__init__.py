"""FaceID model families on a shared SDXL base: what is common to them, and each family in its package.

``spec`` (which model is which), ``hub`` (finding and fetching weights), ``base`` (the shared
SDXL base), ``settings`` (per-request settings, styles, schedulers), ``cache`` (loaded models),
``errors``, ``family`` (the interface every family offers) and ``registry``; ``instantid/`` is the
first family. ``generate`` turns a reference face and a prompt into images with the registered
models, and ``zerogpu`` attaches a GPU to it on a ZeroGPU Space. The rest of the studio imports
from here.
"""
from __future__ import annotations

from .adapter import AdapterModel, AdapterSlot, load_ip_adapter_state
from .base import SharedBase, env_dtype, load_base, pick_device
from .cache import ModelCache
from .errors import CheckpointError, MissingWeightsError, OutOfMemory
from .family import Family
from .hub import (DOWNLOADS, LCM_LORA_SDXL, SDXL_BASE, download_weights, hf_command, local_base_dir, missing_base,
                  missing_lcm_lora)
from .instantid import (SDXL_UNET_CONFIG, InstantID, ResamplerShape, check_ip_adapter, copy_ip_adapter_state_,
                        init_ip_adapter_state, ip_adapter_layout, ip_adapter_state_dict, load_instantid,
                        local_identitynet_dir, local_ip_adapter_file,
                        route_face_tokens)
from .faceid import FaceID, check_faceid, faceid_layout, faceid_state_dict, load_faceid
from .registry import FAMILIES, family_of, missing_weights
from .settings import (DEFAULT_STYLE, DEMO_NEGATIVE_PROMPT, FAST_GUIDANCE, FAST_STEPS, SCHEDULERS, STYLES,
                       GenerationSettings, apply_style, make_scheduler, photo_framing)
from .spec import CROSSFACEID_REPO, DEFAULT_MODELS, FACEID, FACEID_REPO, INSTANTID, INSTANTID_REPO, RELEASED_FACE_PACK, ModelSpec

__all__ = ["AdapterModel", "AdapterSlot", "apply_style", "check_faceid", "check_ip_adapter", "CheckpointError",
           "copy_ip_adapter_state_", "CROSSFACEID_REPO", "DEFAULT_MODELS", "DEFAULT_STYLE", "DEMO_NEGATIVE_PROMPT",
           "download_weights", "DOWNLOADS", "env_dtype", "FaceID", "FACEID", "faceid_layout", "FACEID_REPO",
           "faceid_state_dict", "FAMILIES", "Family", "family_of", "FAST_GUIDANCE", "FAST_STEPS",
           "GenerationSettings", "hf_command", "init_ip_adapter_state", "InstantID", "INSTANTID", "INSTANTID_REPO",
           "ip_adapter_layout", "ip_adapter_state_dict", "LCM_LORA_SDXL", "load_base", "load_faceid",
           "load_instantid", "load_ip_adapter_state", "local_base_dir", "local_identitynet_dir",
           "local_ip_adapter_file", "make_scheduler", "missing_base", "missing_lcm_lora", "missing_weights",
           "MissingWeightsError", "ModelCache", "ModelSpec", "OutOfMemory", "photo_framing", "pick_device",
           "RELEASED_FACE_PACK", "ResamplerShape", "route_face_tokens", "SCHEDULERS", "SDXL_BASE",
           "SDXL_UNET_CONFIG", "SharedBase", "STYLES"]
