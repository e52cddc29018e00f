"""The FaceID families the studio knows, and which one loads a model."""
from __future__ import annotations

from .faceid import FAMILY as FACEID
from .family import Family
from .instantid import FAMILY as INSTANTID
from .spec import ModelSpec

FAMILIES: dict[str, Family] = {f.name: f for f in (INSTANTID, FACEID)}


def family_of(spec: ModelSpec) -> Family:
    """The family that loads ``spec`` (its ``family``), or a clear error for one the studio does not know."""
    if spec.family not in FAMILIES:
        raise ValueError(f"model '{spec.name}': unknown family {spec.family!r}; one of {', '.join(FAMILIES)}")
    return FAMILIES[spec.family]


def missing_weights(spec: ModelSpec) -> list[str]:
    """What of ``spec`` is not on this machine, each with how to get it, as its family says. Never downloads."""
    return family_of(spec).missing_weights(spec)
