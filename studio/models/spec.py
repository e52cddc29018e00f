"""Which model is which: a model's parts (hub ids or local paths), the face pack it expects, and the
released models the studio knows by name."""
from __future__ import annotations

from dataclasses import dataclass

from .hub import LCM_LORA_SDXL, SDXL_BASE

INSTANTID_REPO = "InstantX/InstantID"
CROSSFACEID_REPO = "Super-shuhe/CrossFaceID-InstantID"
FACEID_REPO = "h94/IP-Adapter-FaceID"
INSTANTID = "InstantID"
FACEID = "IP-Adapter-FaceID"
#: The face pack the released InstantID / CrossFaceID weights were trained with.
RELEASED_FACE_PACK = "antelopev2"


@dataclass(frozen=True)
class ModelSpec:
    """Where one model's parts come from (hub ids or local paths), and the face pack it expects.

    ``family``: the model family that loads it (``InstantID`` or ``IP-Adapter-FaceID``; see
    :mod:`studio.models.registry`). ``identitynet``: InstantID's ControlNet (empty for a family
    without one). ``lora``: LoRA weights that belong to the adapter (IP-Adapter-FaceID's release has
    one), empty for none. ``face_pack``: the pack whose embeddings the model was trained on; another
    pack's 512-d embedding is a different space, so generating with one is refused unless
    overridden. ``lcm_lora``: the LCM-LoRA of this model's SDXL base, for fast mode.
    """

    name: str
    base: str = SDXL_BASE
    identitynet: str = INSTANTID_REPO  # a repo/dir holding ControlNetModel/ or controlnet/, or that folder itself
    ip_adapter: str = INSTANTID_REPO  # a repo/dir holding the adapter file, or the file itself
    face_pack: str = RELEASED_FACE_PACK
    lcm_lora: str = LCM_LORA_SDXL
    family: str = INSTANTID
    lora: str = ""
    parent: str = ""  # the model a studio training run started from (its Δ in Table 2 is taken against it)

    def to_dict(self) -> dict:
        d = {"name": self.name, "base": self.base, "identitynet": self.identitynet, "ip_adapter": self.ip_adapter,
             "face_pack": self.face_pack, "lcm_lora": self.lcm_lora}
        return d | self._family_fields() | ({"parent": self.parent} if self.parent else {})

    def weights_key(self) -> dict:
        """What decides a sample's pixels (the expected face pack and the LoRA source only when used)."""
        return {"name": self.name, "base": self.base, "identitynet": self.identitynet,
                "ip_adapter": self.ip_adapter} | self._family_fields()

    def _family_fields(self) -> dict:
        """Family and adapter LoRA, written only when they are not InstantID's defaults: an InstantID model's
        record (and the key of its samples) stays what it was before there were families."""
        return {k: v for k, v in (("family", self.family), ("lora", self.lora))
                if v != {"family": INSTANTID, "lora": ""}[k]}


DEFAULT_MODELS = {
    "InstantID": ModelSpec("InstantID"),
    "CrossFaceID": ModelSpec("CrossFaceID", identitynet=CROSSFACEID_REPO, ip_adapter=CROSSFACEID_REPO),
    "IP-Adapter-FaceID": ModelSpec("IP-Adapter-FaceID", identitynet="", ip_adapter=FACEID_REPO, family=FACEID),
}
