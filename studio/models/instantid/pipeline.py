"""A loaded InstantID model and its call (a face embedding, the keypoint image and the settings in, one
image out), with the hook that gives the IdentityNet the face tokens."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..base import SharedBase
from ..errors import MissingWeightsError, OutOfMemory
from ..hub import lora_file, missing_lcm_lora
from ..settings import GenerationSettings, apply_style, make_scheduler
from ..spec import ModelSpec


@dataclass
class AdapterSlot:
    """One model's Resampler and IP attention processors, to put into a shared UNet before its call."""

    projection: object
    processors: dict


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
class InstantID:
    """A loaded model. Calls are serialised per SDXL base: λ, the hooks, the adapter and LoRA live on shared parts."""

    pipe: object
    spec: ModelSpec
    adapter: AdapterSlot | None = None
    base: SharedBase | None = None
    scheduler_config: dict = field(default=None, repr=False)

    def __post_init__(self):
        if self.base is None:
            self.base = SharedBase({})
        if self.scheduler_config is None:
            self.scheduler_config = dict(self.pipe.scheduler.config)

    def face_tokens(self, embeds):
        """Resampler output for ip_adapter image embeds of shape (B, 1, 1, 512) -> (B, 16, D)."""
        proj = self.pipe.unet.encoder_hid_proj
        tokens = proj([embeds.to(self.pipe.unet.device, self.pipe.unet.dtype)])[0]
        return tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])

    def embeds(self, face_embedding, cfg: bool):
        """InstantID's layout: raw ArcFace embedding, zeros as the negative when guiding."""
        import numpy as np
        import torch

        pos = torch.tensor(np.array(face_embedding, dtype=np.float32)).reshape(1, 1, 1, -1)
        return torch.cat([torch.zeros_like(pos), pos]) if cfg else pos

    def activate(self) -> None:
        """Put this model's adapter into the (possibly shared) UNet. Call under ``base.lock``."""
        unet = self.pipe.unet
        if self.adapter is None or unet.encoder_hid_proj is self.adapter.projection:
            return
        unet.encoder_hid_proj = self.adapter.projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        for name, proc in self.adapter.processors.items():
            unet.get_submodule(name).set_processor(proc)

    def _lora(self, on: bool) -> None:
        """Fast mode: load the base's LCM-LoRA once (diffusers' LoRA loader), enable it for this call only."""
        if on and self.base.lcm_lora is None:
            why = missing_lcm_lora(self.spec)
            if why:
                raise MissingWeightsError(why)
            f = lora_file(self.spec.lcm_lora)
            self.pipe.load_lora_weights(str(f.parent), weight_name=f.name, adapter_name="lcm")
            self.base.lcm_lora = self.spec.lcm_lora
        if self.base.lcm_lora is not None:
            (self.pipe.enable_lora if on else self.pipe.disable_lora)()

    @property
    def generator_device(self) -> str:
        """Where seeds are drawn: the pipeline's device, as the official demo does (its seeds reproduce on CUDA)."""
        return "cuda" if self.pipe.unet.device.type == "cuda" or getattr(self.pipe, "_offload_device", None) else "cpu"

    def __call__(self, face_embedding, kps_image, settings: GenerationSettings, mask=None):
        import torch

        settings.validate()
        width, height = (settings.width, settings.height) if settings.width else kps_image.size
        prompt, negative = apply_style(settings.style, settings.prompt, settings.negative_prompt)
        cfg = settings.guidance > 1.0
        # in the pipeline's dtype: the stock pipeline hands these to the Resampler as they are (fp16 on a GPU)
        embeds = self.embeds(face_embedding, cfg).to(self.pipe.unet.device, self.pipe.unet.dtype)
        generator = torch.Generator(device=self.generator_device).manual_seed(int(settings.seed))
        region = mask if settings.face_region_only else None
        # diffusers' own IP-adapter masking: the λ term only inside the face region
        kwargs = {"cross_attention_kwargs": {"ip_adapter_masks": [region[None, None]]}} if region is not None else {}
        with self.base.lock:
            self.activate()
            self.pipe.scheduler = make_scheduler(settings.scheduler, self.scheduler_config)
            self._lora(settings.scheduler == "LCM")  # outside inference mode: peft toggles requires_grad
            self.pipe.set_ip_adapter_scale(float(settings.ip_scale))
            try:
                with torch.inference_mode(), route_face_tokens(self.pipe.controlnet, self.face_tokens(embeds), region):
                    result = self.pipe(
                        prompt=prompt, negative_prompt=negative or None, image=kps_image,
                        controlnet_conditioning_scale=float(settings.identitynet_scale), ip_adapter_image_embeds=[embeds],
                        num_inference_steps=int(settings.steps), guidance_scale=float(settings.guidance),
                        width=int(width), height=int(height), generator=generator, **kwargs,
                    )
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise OutOfMemory(
                    f"the GPU ran out of memory generating {width}x{height} with '{self.spec.name}': lower the size "
                    "(long side) or the steps, compare one model at a time, or start the studio with "
                    "STUDIO_OFFLOAD=model (CPU offload) and STUDIO_VAE_TILING=1") from None
        return result.images[0]
