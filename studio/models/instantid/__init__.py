"""InstantID, the first FaceID family: SDXL + IdentityNet (a ControlNetModel) + the IP-adapter.

Split by job, as open_clip splits its factory: ``layout`` (where the files are and the shapes of
``ip-adapter.bin``), ``weights`` (finding them, what is missing and how to get it), ``convert``
(the official layout to and from diffusers' modules, a fresh adapter, saving), ``load``
(assembling the pipeline on a shared SDXL base, routing the face tokens) and ``pipeline`` (a
loaded model's call).

What InstantID adds to a stock ``StableDiffusionXLControlNetPipeline`` is small, so it is added
around the stock pipeline instead of copying it: diffusers' own ``load_ip_adapter`` loads the
adapter after a key/shape check; a forward pre-hook gives the IdentityNet the Resampler's face
tokens as its cross-attention context; the negative face embedding is zeros; "face region only"
masks the IdentityNet residuals (the hook) and the λ term (diffusers' ``ip_adapter_masks``).
"""
from __future__ import annotations

from ..family import Family
from .convert import (copy_ip_adapter_state_, init_ip_adapter_state, ip_adapter_state_dict,
                      save_official)
from .layout import (IDENTITYNET_SUBFOLDER, IP_ADAPTER_FILE, RELEASE_IDENTITYNET_SUBFOLDER, RELEASE_IP_ADAPTER_FILE,
                     SDXL_UNET_CONFIG, ResamplerShape, check_ip_adapter, ip_adapter_layout)
from .load import load_instantid
from .pipeline import InstantID, route_face_tokens
from .weights import local_identitynet_dir, local_ip_adapter_file, missing_weights

FAMILY = Family(name="InstantID", trainable=("Resampler", "IP-adapter", "IdentityNet"), missing_weights=missing_weights,
                load=load_instantid, save_official=save_official,
                saved_parts=lambda out: {"identitynet": str(out), "ip_adapter": str(out / IP_ADAPTER_FILE)})

__all__ = ["FAMILY", "IDENTITYNET_SUBFOLDER", "IP_ADAPTER_FILE", "RELEASE_IDENTITYNET_SUBFOLDER", "RELEASE_IP_ADAPTER_FILE", "SDXL_UNET_CONFIG",
           "InstantID", "ResamplerShape", "check_ip_adapter", "copy_ip_adapter_state_",
           "init_ip_adapter_state", "ip_adapter_layout", "ip_adapter_state_dict", "load_instantid",
           "local_identitynet_dir", "local_ip_adapter_file", "missing_weights",
           "route_face_tokens", "save_official"]
