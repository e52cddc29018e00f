"""What every IP-adapter family shares on a shared SDXL base: its adapter's slot in the UNet, the face
embedding's layout, fast mode, and one call of the stock diffusers pipeline.

The adapter (a face projection in ``encoder_hid_proj`` and IP attention processors) lives inside
the UNet, so models on one base take turns: each keeps its own slot and puts it in place under the
base's lock for its call. Both families load their adapter with diffusers' own ``load_ip_adapter``.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from .base import SharedBase, load_base, pick_device
from .errors import MissingWeightsError, OutOfMemory
from .hub import lora_file, missing_lcm_lora
from .settings import GenerationSettings, apply_style, make_scheduler
from .spec import ModelSpec


def load_ip_adapter_state(path: Path) -> dict:
    """An adapter file as ``{'image_proj': ..., 'ip_adapter': ...}``; flat ``image_proj.<key>`` layouts are nested."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path))
    else:
        flat = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(flat, dict) and {"image_proj", "ip_adapter"} <= set(flat):
        return flat
    state: dict = {"image_proj": {}, "ip_adapter": {}}
    for k, v in (flat.items() if isinstance(flat, dict) else ()):
        part, _, rest = k.partition(".")
        if part in state:
            state[part][rest] = v
    return state if state["image_proj"] or state["ip_adapter"] else flat


# -- the IP layers, in the official numbering (1, 3, 5, ... over the UNet's attention processors) ----

def ip_processors(unet) -> list:
    """The UNet's IP-adapter attention processors in the official numbering order (1, 3, 5, ...)."""
    return [p for p in unet.attn_processors.values() if hasattr(p, "to_k_ip")]


def ip_layers_state(unet) -> dict:
    """``{n}.to_k_ip.weight`` / ``{n}.to_v_ip.weight`` of a UNet with a loaded adapter (copies)."""
    ip = {}
    for n, proc in enumerate(ip_processors(unet)):
        ip[f"{2 * n + 1}.to_k_ip.weight"] = proc.to_k_ip[0].weight.detach().clone()
        ip[f"{2 * n + 1}.to_v_ip.weight"] = proc.to_v_ip[0].weight.detach().clone()
    return ip


def copy_ip_layers_(unet, ip: dict) -> None:
    """Copy official-layout IP weights into the loaded processors in place (call under ``torch.no_grad``)."""
    for n, proc in enumerate(ip_processors(unet)):
        proc.to_k_ip[0].weight.copy_(ip[f"{2 * n + 1}.to_k_ip.weight"])
        proc.to_v_ip[0].weight.copy_(ip[f"{2 * n + 1}.to_v_ip.weight"])


def ip_layers_from_attention(unet) -> dict:
    """Fresh IP layers for a base UNet: each cross-attention's ``to_k``/``to_v`` copied (how IP-Adapter and
    InstantID start their training)."""
    ip, key_id = {}, 1
    modules = dict(unet.named_modules())
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or name.startswith("encoder_hid_proj"):
            continue
        attn = modules[name[: -len(".processor")]]
        ip[f"{key_id}.to_k_ip.weight"] = attn.to_k.weight.detach().clone().float()
        ip[f"{key_id}.to_v_ip.weight"] = attn.to_v.weight.detach().clone().float()
        key_id += 2
    return ip


def layout_problems(state: dict, expected: dict, extra_ok: Callable[[str, str], bool] = lambda part, key: False
                    ) -> list[str]:
    """Missing, unexpected (unless ``extra_ok(part, key)``) and mis-shaped keys of ``state`` against
    ``expected`` (part -> key -> shape), a line per part and kind."""
    problems = []
    for part, keys in expected.items():
        got = state[part]
        missing = [k for k in keys if k not in got]
        unexpected = [k for k in got if k not in keys and not extra_ok(part, k)]
        wrong = [f"{k}: {tuple(got[k].shape)} != {keys[k]}" for k in keys if k in got and tuple(got[k].shape) != keys[k]]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                problems.append(f"{part}: {len(items)} {label} ({', '.join(items[:4])}{', ...' if len(items) > 4 else ''})")
    return problems


def prepare_load(spec: ModelSpec, missing: list[str], device: str | None, dtype, base: SharedBase | None,
                 offload: bool, vae_tiling: bool):
    """What every family's loader does first: refuse missing weights (named), pick the device and dtype
    (fp16 on a GPU, fp32 on the CPU), and load the SDXL base unless one is shared; returns (device, dtype, base)."""
    import torch

    if missing:
        raise MissingWeightsError(f"model '{spec.name}' is missing weights:\n- " + "\n- ".join(missing))
    dev = pick_device(device)
    if offload and dev.type == "cpu":
        raise ValueError("CPU offload moves parts between the GPU and the CPU: it needs a GPU (device cuda)")
    dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    if base is None:
        base = load_base(spec.base, "cpu" if offload else str(dev), dtype, vae_tiling)
    return dev, dtype, base


@dataclass
class AdapterSlot:
    """One model's face projection and IP attention processors, to put into a shared UNet before its call."""

    projection: object
    processors: dict


def install_adapter(pipe, base: SharedBase, state: dict, device, offload: bool = False) -> AdapterSlot:
    """Load an adapter (official ``image_proj`` / ``ip_adapter`` layout) into ``pipe``'s UNet with diffusers'
    loader, move the pipeline to ``device`` (or offload it), and return the model's slot."""
    with base.lock:
        if pipe.unet.encoder_hid_proj is not None:  # another model's adapter is in the shared UNet
            pipe.unload_ip_adapter()
        pipe.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
        if offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        slot = AdapterSlot(pipe.unet.encoder_hid_proj, {name[: -len(".processor")]: proc for name, proc in
                                                        pipe.unet.attn_processors.items()
                                                        if not name.startswith("encoder_hid_proj")})
        base.models += 1
    pipe.set_progress_bar_config(disable=True)
    return slot


@dataclass
class AdapterModel:
    """A loaded model of an IP-adapter family. Calls are serialised per SDXL base: λ, the hooks, the adapter
    and the LoRA live on shared parts."""

    pipe: object
    spec: ModelSpec
    adapter: AdapterSlot | None = None
    base: SharedBase | None = None
    scheduler_config: dict = field(default=None, repr=False)
    own_lora: str | None = None  # the PEFT adapter name of the model's own LoRA, kept on in fast mode

    def __post_init__(self):
        if self.base is None:
            self.base = SharedBase({})
        if self.scheduler_config is None:
            self.scheduler_config = dict(self.pipe.scheduler.config)

    def embeds(self, face_embedding, cfg: bool):
        """The raw ArcFace embedding as (B, 1, 1, 512), zeros as the negative when guiding (both families)."""
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
        if self.base.lcm_lora is not None and self.own_lora:  # the model's own LoRA stays on
            self.pipe.set_adapters([self.own_lora, "lcm"] if on else [self.own_lora])
        elif self.base.lcm_lora is not None:
            (self.pipe.enable_lora if on else self.pipe.disable_lora)()

    @property
    def generator_device(self) -> str:
        """Where seeds are drawn: the pipeline's device, as the official demo does (its seeds reproduce on CUDA)."""
        return "cuda" if self.pipe.unet.device.type == "cuda" or getattr(self.pipe, "_offload_device", None) else "cpu"

    def _run(self, settings: GenerationSettings, embeds, width: int, height: int, region=None,
             extra: dict | None = None, context: Callable | None = None):
        """One call of the stock pipeline with this model's adapter, λ, scheduler and fast mode in place.

        ``extra``: the family's own pipeline arguments; ``context()``: a context manager entered around the
        call, after the adapter is in place (InstantID routes the face tokens to its IdentityNet there)."""
        import torch

        prompt, negative = apply_style(settings.style, settings.prompt, settings.negative_prompt)
        generator = torch.Generator(device=self.generator_device).manual_seed(int(settings.seed))
        # diffusers' own IP-adapter masking: the λ term only inside the face region
        kwargs = {"cross_attention_kwargs": {"ip_adapter_masks": [region[None, None]]}} if region is not None else {}
        with self.base.lock:
            self.activate()
            self.pipe.scheduler = make_scheduler(settings.scheduler, self.scheduler_config)
            self._lora(settings.scheduler == "LCM")  # outside inference mode: peft toggles requires_grad
            self.pipe.set_ip_adapter_scale(float(settings.ip_scale))
            try:
                with torch.inference_mode(), (context() if context else nullcontext()):
                    result = self.pipe(
                        prompt=prompt, negative_prompt=negative or None, ip_adapter_image_embeds=[embeds],
                        num_inference_steps=int(settings.steps), guidance_scale=float(settings.guidance),
                        width=int(width), height=int(height), generator=generator, **kwargs, **(extra or {}),
                    )
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise OutOfMemory(
                    f"the GPU ran out of memory generating {width}x{height} with '{self.spec.name}': lower the size "
                    "(long side) or the steps, compare one model at a time, or start the studio with "
                    "STUDIO_OFFLOAD=model (CPU offload) and STUDIO_VAE_TILING=1") from None
        return result.images[0]
