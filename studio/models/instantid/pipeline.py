"""A loaded InstantID model and its call (a face embedding, the keypoint image and the settings in, one
image out), with the hook that gives the IdentityNet the face tokens."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..adapter import AdapterModel
from ..settings import GenerationSettings


@contextmanager
def route_face_tokens(controlnet, face_tokens, mask=None) -> Iterator[None]:
    """For the calls inside this block, the ControlNet's cross-attention context is ``face_tokens``.

    ``face_tokens``: (2B, N, D) with classifier-free guidance (negative first) or (B, N, D); a
    call with a half-size batch (guess mode) gets the positive half. ``mask``: (H, W) tensor in
    [0, 1]; the IdentityNet's residuals are multiplied by it (resized), so it only steers the face.
    """
    import torch.nn.functional as F

    def pre_hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        tokens = face_tokens if face_tokens.shape[0] == sample.shape[0] else face_tokens.chunk(2)[1]
        kwargs["encoder_hidden_states"] = tokens.to(dtype=sample.dtype, device=sample.device)
        return args, kwargs

    def post_hook(module, args, kwargs, output):
        down, mid = output
        def apply(t):
            m = F.interpolate(mask[None, None].to(t.device, t.dtype), size=t.shape[-2:], mode="bilinear")
            return t * m
        return [apply(d) for d in down], apply(mid)

    handles = [controlnet.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    if mask is not None:
        handles.append(controlnet.register_forward_hook(post_hook, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class InstantID(AdapterModel):
    """A loaded InstantID model: the stock ControlNet pipeline with the IdentityNet seeing the face tokens."""

    def face_tokens(self, embeds):
        """Resampler output for ip_adapter image embeds of shape (B, 1, 1, 512) -> (B, 16, D)."""
        proj = self.pipe.unet.encoder_hid_proj
        tokens = proj([embeds.to(self.pipe.unet.device, self.pipe.unet.dtype)])[0]
        return tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])

    def __call__(self, face_embedding, kps_image, settings: GenerationSettings, mask=None):
        settings.validate()
        width, height = (settings.width, settings.height) if settings.width else kps_image.size
        cfg = settings.guidance > 1.0
        # in the pipeline's dtype: the stock pipeline hands these to the Resampler as they are (fp16 on a GPU)
        embeds = self.embeds(face_embedding, cfg).to(self.pipe.unet.device, self.pipe.unet.dtype)
        region = mask if settings.face_region_only else None
        return self._run(settings, embeds, width, height, region,
                         extra={"image": kps_image, "controlnet_conditioning_scale": float(settings.identitynet_scale)},
                         context=lambda: route_face_tokens(self.pipe.controlnet, self.face_tokens(embeds), region))
