"""The FaceID families the studio knows, and which one loads a model."""
from __future__ import annotations

from .family import Family
from .instantid import FAMILY as INSTANTID
from .spec import ModelSpec

FAMILIES: dict[str, Family] = {f.name: f for f in (INSTANTID,)}


def family_of(spec: ModelSpec) -> Family:
    """The family that loads ``spec`` (InstantID, the only one so far)."""
    return FAMILIES["InstantID"]
