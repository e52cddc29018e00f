"""Which model is which: a model's parts (hub ids or local paths), the face pack it expects, and the
released models the studio knows by name."""
from __future__ import annotations

from dataclasses import dataclass

from .hub import LCM_LORA_SDXL, SDXL_BASE

INSTANTID_REPO = "InstantX/InstantID"
CROSSFACEID_REPO = "Super-shuhe/CrossFaceID-InstantID"
#: The face pack the released InstantID / CrossFaceID weights were trained with.
RELEASED_FACE_PACK = "antelopev2"


@dataclass(frozen=True)
class ModelSpec:
    """Where one model's parts come from (hub ids or local paths), and the face pack it expects.

    ``face_pack``: the pack whose embeddings the model was trained on; another pack's 512-d
    embedding is a different space, so generating with one is refused unless overridden.
    ``lcm_lora``: the LCM-LoRA of this model's SDXL base, for fast mode.
    """

    name: str
    base: str = SDXL_BASE
    identitynet: str = INSTANTID_REPO  # a repo/dir holding ControlNetModel/ or controlnet/, or that folder itself
    ip_adapter: str = INSTANTID_REPO  # a repo/dir holding ip-adapter.bin or pytorch_model.bin, or the file itself
    face_pack: str = RELEASED_FACE_PACK
    lcm_lora: str = LCM_LORA_SDXL

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "identitynet": self.identitynet, "ip_adapter": self.ip_adapter,
                "face_pack": self.face_pack, "lcm_lora": self.lcm_lora}

    def weights_key(self) -> dict:
        """What decides a sample's pixels (the expected face pack and the LoRA source only when used)."""
        return {"name": self.name, "base": self.base, "identitynet": self.identitynet, "ip_adapter": self.ip_adapter}


DEFAULT_MODELS = {
    "InstantID": ModelSpec("InstantID"),
    "CrossFaceID": ModelSpec("CrossFaceID", identitynet=CROSSFACEID_REPO, ip_adapter=CROSSFACEID_REPO),
}
