"""A loaded IP-Adapter-FaceID model and its call: the stock SDXL pipeline with the face as IP-adapter
embeddings (no IdentityNet, no keypoints: the keypoint image gives only the output size)."""
from __future__ import annotations

from dataclasses import dataclass

from ..adapter import AdapterModel
from ..settings import GenerationSettings


@dataclass
class FaceID(AdapterModel):
    """λ is the IP-adapter scale; the negative face is the projection of a zero embedding, as in the release."""

    def __call__(self, face_embedding, kps_image, settings: GenerationSettings, mask=None):
        settings.validate()
        width, height = (settings.width, settings.height) if settings.width else kps_image.size
        embeds = self.embeds(face_embedding, settings.guidance > 1.0).to(self.pipe.unet.device, self.pipe.unet.dtype)
        region = mask if settings.face_region_only else None
        return self._run(settings, embeds, width, height, region)
