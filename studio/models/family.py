"""What the studio needs of a FaceID model family (``registry`` lists the families it knows).

The paper compares two families fine-tuned on the same data (InstantID, Table 2; IP-Adapter,
Table 3). Generation, evaluation and training reach a family only through :class:`Family`: which
weights a model needs and how to get them, loading it on a shared SDXL base, the parts that
fine-tuning trains, and saving them in the family's official layout. A loaded model is called as
``model(face_embedding, kps_image, settings, mask=None)`` and returns one image.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spec import ModelSpec


@dataclass(frozen=True)
class Family:
    """One FaceID model family, as the rest of the studio sees it."""

    name: str
    #: the modules fine-tuning trains (the SDXL base stays frozen), as the paper names them
    trainable: tuple[str, ...]
    #: spec -> what is not on this machine, each with how to get it (looks, never downloads)
    missing_weights: Callable[[ModelSpec], list[str]]
    #: (spec, device, dtype, base, offload, vae_tiling) -> a loaded model
    load: Callable[..., Any]
    #: (out_dir, unet, identitynet) -> writes the trained parts in the family's released layout
    save_official: Callable[..., None]
    #: out_dir -> the ModelSpec fields (identitynet, ip_adapter) that point at what save_official wrote there
    saved_parts: Callable[[Path], dict]
