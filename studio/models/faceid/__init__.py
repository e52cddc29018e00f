"""IP-Adapter-FaceID, the second FaceID family (the paper's IP-Adapter rows): the ArcFace embedding
through a small projection to 4 tokens, attended by decoupled cross-attention next to the text.

Split by job as InstantID is: ``layout`` (the release's files and shapes, the check), ``weights``
(finding them, what is missing and how to get it), ``convert`` (release layout to and from
diffusers' modules, a fresh adapter, saving), ``load`` (the stock SDXL pipeline with diffusers'
``load_ip_adapter``) and ``pipeline`` (a loaded model's call). No IdentityNet, no keypoints.
"""
from __future__ import annotations

from ..family import Family
from .convert import copy_faceid_state_, faceid_state_dict, init_faceid_state, save_official
from .layout import FACEID_FILE, FACEID_LORA_FILE, ProjShape, check_faceid, cross_attention_widths, faceid_layout
from .load import load_faceid
from .pipeline import FaceID
from .weights import local_faceid_file, local_lora_file, missing_weights

FAMILY = Family(name="IP-Adapter-FaceID", trainable=("face projection", "IP-adapter"), missing_weights=missing_weights,
                load=load_faceid, save_official=save_official,
                saved_parts=lambda out: {"identitynet": "", "ip_adapter": str(out / FACEID_FILE)})

__all__ = ["FACEID_FILE", "FACEID_LORA_FILE", "FAMILY", "FaceID", "ProjShape", "check_faceid", "copy_faceid_state_",
           "cross_attention_widths", "faceid_layout", "faceid_state_dict", "init_faceid_state", "load_faceid",
           "local_faceid_file", "local_lora_file", "missing_weights", "save_official"]
