"""InstantID assembled on diffusers: SDXL + IdentityNet (a ControlNetModel) + the IP-adapter.

What InstantID adds to a stock ``StableDiffusionXLControlNetPipeline`` is small, so it is added
around the stock pipeline instead of copying it:

* the IP-adapter (Resampler ``image_proj`` + ``to_k_ip``/``to_v_ip``) is loaded by diffusers' own
  ``load_ip_adapter`` from the official ``ip-adapter.bin`` layout, after a key/shape check that
  names what is missing;
* the IdentityNet must see the *face tokens* (the Resampler's output) as its cross-attention
  context where the stock pipeline passes the text embeddings: :func:`route_face_tokens` swaps
  them in with a forward pre-hook for the duration of one call (and can mask the IdentityNet's
  residuals to the face region);
* the negative face embedding for classifier-free guidance is zeros, as InstantID does.

Production weights (SDXL base 1.0, InstantX/InstantID, the paper's fine-tuned model) and our own
training runs load through the same :func:`load_instantid`; so do the tiny test models.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
INSTANTID_REPO = "InstantX/InstantID"
CROSSFACEID_REPO = "Super-shuhe/CrossFaceID-InstantID"
IP_ADAPTER_FILE = "ip-adapter.bin"
IDENTITYNET_SUBFOLDER = "ControlNetModel"

#: The SDXL 1.0 UNet architecture (its config.json), to check checkpoints against the full-size
#: model without downloading or allocating it.
SDXL_UNET_CONFIG = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}


@dataclass(frozen=True)
class ResamplerShape:
    """InstantID's face Resampler: 512-d ArcFace embedding -> 16 tokens of the UNet's context width."""

    embed_dims: int = 512
    hidden_dims: int = 1280
    depth: int = 4
    dim_head: int = 64
    num_queries: int = 16
    ff_mult: int = 4


class MissingWeightsError(RuntimeError):
    """Weights are not on this machine; the message lists them and how to get them."""


class CheckpointError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model."""


@dataclass(frozen=True)
class ModelSpec:
    """Where one InstantID model's three parts come from: hub ids or local paths."""

    name: str
    base: str = SDXL_BASE
    identitynet: str = INSTANTID_REPO  # a repo/dir holding ControlNetModel/, or a ControlNetModel dir itself
    ip_adapter: str = INSTANTID_REPO  # a repo/dir holding ip-adapter.bin, or the file itself

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "identitynet": self.identitynet, "ip_adapter": self.ip_adapter}


DEFAULT_MODELS = {
    "InstantID": ModelSpec("InstantID"),
    "CrossFaceID": ModelSpec("CrossFaceID", identitynet=CROSSFACEID_REPO, ip_adapter=CROSSFACEID_REPO),
}


# -- checkpoint layout ---------------------------------------------------------------------------

def ip_adapter_layout(unet, shape: ResamplerShape = ResamplerShape()) -> dict[str, dict[str, tuple[int, ...]]]:
    """Key -> shape of an official InstantID ``ip-adapter.bin`` for ``unet`` (works on the meta device).

    ``image_proj``: the Resampler; ``ip_adapter``: ``{n}.to_k_ip.weight`` / ``{n}.to_v_ip.weight``
    for every cross-attention layer, numbered 1, 3, 5, ... in the UNet's processor order.
    """
    cfg = unet.config
    h, out, inner = shape.hidden_dims, cfg.cross_attention_dim, (shape.hidden_dims // shape.dim_head) * shape.dim_head
    proj: dict[str, tuple[int, ...]] = {
        "latents": (1, shape.num_queries, h), "proj_in.weight": (h, shape.embed_dims), "proj_in.bias": (h,),
        "proj_out.weight": (out, h), "proj_out.bias": (out,), "norm_out.weight": (out,), "norm_out.bias": (out,),
    }
    for i in range(shape.depth):
        for norm in ("norm1", "norm2"):
            proj[f"layers.{i}.0.{norm}.weight"] = (h,)
            proj[f"layers.{i}.0.{norm}.bias"] = (h,)
        proj[f"layers.{i}.0.to_q.weight"] = (inner, h)
        proj[f"layers.{i}.0.to_kv.weight"] = (2 * inner, h)
        proj[f"layers.{i}.0.to_out.weight"] = (h, inner)
        proj[f"layers.{i}.1.0.weight"] = (h,)
        proj[f"layers.{i}.1.0.bias"] = (h,)
        proj[f"layers.{i}.1.1.weight"] = (h * shape.ff_mult, h)
        proj[f"layers.{i}.1.3.weight"] = (h, h * shape.ff_mult)
    ip: dict[str, tuple[int, ...]] = {}
    key_id = 1
    channels = list(cfg.block_out_channels)
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or name.startswith("encoder_hid_proj"):
            continue  # self-attention, or the Resampler's own attention once an adapter is loaded
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        ip[f"{key_id}.to_k_ip.weight"] = (hidden, out)
        ip[f"{key_id}.to_v_ip.weight"] = (hidden, out)
        key_id += 2
    return {"image_proj": proj, "ip_adapter": ip}


def check_ip_adapter(state_dict: dict, unet, shape: ResamplerShape | None = None) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and mis-shaped keys."""
    if not isinstance(state_dict, dict) or not {"image_proj", "ip_adapter"} <= set(state_dict):
        got = sorted(state_dict)[:5] if isinstance(state_dict, dict) else type(state_dict).__name__
        raise CheckpointError(f"an InstantID ip-adapter has 'image_proj' and 'ip_adapter' parts; got {got}")
    if shape is None:  # read the Resampler's size from the checkpoint itself
        lat = state_dict["image_proj"].get("latents")
        pin = state_dict["image_proj"].get("proj_in.weight")
        depth = len({k.split(".")[1] for k in state_dict["image_proj"] if k.startswith("layers.")})
        if lat is None or pin is None:
            raise CheckpointError("image_proj lacks 'latents' or 'proj_in.weight': not an InstantID Resampler")
        shape = ResamplerShape(embed_dims=pin.shape[1], hidden_dims=lat.shape[2], depth=depth, num_queries=lat.shape[1])
    expected = ip_adapter_layout(unet, shape)
    problems = []
    for part, keys in expected.items():
        got = state_dict[part]
        missing = [k for k in keys if k not in got]
        unexpected = [k for k in got if k not in keys]
        wrong = [f"{k}: {tuple(got[k].shape)} != {keys[k]}" for k in keys if k in got and tuple(got[k].shape) != keys[k]]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                problems.append(f"{part}: {len(items)} {label} ({', '.join(items[:4])}{', ...' if len(items) > 4 else ''})")
    if problems:
        raise CheckpointError("ip-adapter does not fit this UNet: " + "; ".join(problems))


# -- converting between the official layout and diffusers' modules ------------------------------

def _proj_key_pairs(depth: int) -> list[tuple[str, tuple[str, ...]]]:
    """(official image_proj key, diffusers IPAdapterPlusImageProjection key(s)); ``to_kv`` is split in two."""
    pairs = [(k, (k,)) for k in ("latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias",
                                  "norm_out.weight", "norm_out.bias")]
    for i in range(depth):
        for off, on in (("0.norm1", "ln0"), ("0.norm2", "ln1")):
            pairs += [(f"layers.{i}.{off}.{p}", (f"layers.{i}.{on}.{p}",)) for p in ("weight", "bias")]
        pairs += [(f"layers.{i}.0.to_q.weight", (f"layers.{i}.attn.to_q.weight",)),
                  (f"layers.{i}.0.to_kv.weight", (f"layers.{i}.attn.to_k.weight", f"layers.{i}.attn.to_v.weight")),
                  (f"layers.{i}.0.to_out.weight", (f"layers.{i}.attn.to_out.0.weight",)),
                  (f"layers.{i}.1.0.weight", (f"layers.{i}.ff.0.weight",)),
                  (f"layers.{i}.1.0.bias", (f"layers.{i}.ff.0.bias",)),
                  (f"layers.{i}.1.1.weight", (f"layers.{i}.ff.1.net.0.proj.weight",)),
                  (f"layers.{i}.1.3.weight", (f"layers.{i}.ff.1.net.2.weight",))]
    return pairs


def _official_image_proj(proj) -> dict:
    """A diffusers IPAdapterPlusImageProjection's weights under the official ``image_proj`` keys (copies)."""
    import torch

    ours = proj.state_dict()
    depth = len({k.split(".")[1] for k in ours if k.startswith("layers.")})
    return {off: (torch.cat([ours[k] for k in on]) if len(on) > 1 else ours[on[0]]).detach().clone()
            for off, on in _proj_key_pairs(depth)}


def _ip_processors(unet) -> list:
    """The UNet's IP-adapter attention processors in the official numbering order (1, 3, 5, ...)."""
    return [p for p in unet.attn_processors.values() if hasattr(p, "to_k_ip")]


def ip_adapter_state_dict(unet) -> dict:
    """The Resampler and IP layers of a UNet with a loaded IP-adapter, in the official ``ip-adapter.bin`` layout.

    The inverse of diffusers' conversion, so a fine-tuned adapter is saved in the layout the
    released models use and :func:`load_instantid` (or InstantID's own code) reads.
    """
    image_proj = _official_image_proj(unet.encoder_hid_proj.image_projection_layers[0])
    ip = {}
    for n, proc in enumerate(_ip_processors(unet)):
        ip[f"{2 * n + 1}.to_k_ip.weight"] = proc.to_k_ip[0].weight.detach().clone()
        ip[f"{2 * n + 1}.to_v_ip.weight"] = proc.to_v_ip[0].weight.detach().clone()
    return {"image_proj": image_proj, "ip_adapter": ip}


def copy_ip_adapter_state_(unet, state: dict) -> None:
    """Copy an official-layout state into the UNet's loaded IP-adapter modules in place (optimizers keep them)."""
    import torch

    proj = unet.encoder_hid_proj.image_projection_layers[0]
    params = proj.state_dict()
    depth = len({k.split(".")[1] for k in params if k.startswith("layers.")})
    with torch.no_grad():
        for off, on in _proj_key_pairs(depth):
            parts = state["image_proj"][off].chunk(len(on)) if len(on) > 1 else (state["image_proj"][off],)
            for key, value in zip(on, parts):
                params[key].copy_(value)
        for n, proc in enumerate(_ip_processors(unet)):
            proc.to_k_ip[0].weight.copy_(state["ip_adapter"][f"{2 * n + 1}.to_k_ip.weight"])
            proc.to_v_ip[0].weight.copy_(state["ip_adapter"][f"{2 * n + 1}.to_v_ip.weight"])


def init_ip_adapter_state(unet, shape: ResamplerShape = ResamplerShape(), seed: int = 0) -> dict:
    """A fresh adapter for a base UNet: a newly initialised Resampler, and ``to_k_ip``/``to_v_ip``
    copied from each cross-attention's ``to_k``/``to_v`` (how IP-Adapter and InstantID start)."""
    import torch
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    torch.manual_seed(seed)
    proj = IPAdapterPlusImageProjection(embed_dims=shape.embed_dims, output_dims=unet.config.cross_attention_dim,
                                        hidden_dims=shape.hidden_dims, depth=shape.depth, dim_head=shape.dim_head,
                                        heads=shape.hidden_dims // shape.dim_head, num_queries=shape.num_queries,
                                        ffn_ratio=shape.ff_mult)
    image_proj = _official_image_proj(proj)
    ip, key_id = {}, 1
    modules = dict(unet.named_modules())
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or name.startswith("encoder_hid_proj"):
            continue
        attn = modules[name[: -len(".processor")]]
        ip[f"{key_id}.to_k_ip.weight"] = attn.to_k.weight.detach().clone().float()
        ip[f"{key_id}.to_v_ip.weight"] = attn.to_v.weight.detach().clone().float()
        key_id += 2
    return {"image_proj": image_proj, "ip_adapter": ip}


# -- finding weights -----------------------------------------------------------------------------

def _local(path: str) -> Path | None:
    p = Path(path).expanduser()
    return p if p.exists() else None


def _hub_cached(repo: str, filename: str) -> Path | None:
    """The file from the local hub cache, if a hub id's download is there (never goes online)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(repo, filename)
    except HFValidationError:  # a path that does not exist, not a hub id
        return None
    return Path(found) if isinstance(found, str) else None


def _identitynet_dir(source: str) -> Path | None:
    p = _local(source)
    if p is not None:
        return p if (p / "config.json").exists() else p / IDENTITYNET_SUBFOLDER
    cached = _hub_cached(source, f"{IDENTITYNET_SUBFOLDER}/config.json")
    return cached.parent if cached else None


def _ip_adapter_file(source: str) -> Path | None:
    p = _local(source)
    if p is not None:
        return p if p.is_file() else p / IP_ADAPTER_FILE
    return _hub_cached(source, IP_ADAPTER_FILE)


def _base_dir(source: str) -> Path | None:
    p = _local(source)
    if p is not None:
        return p
    cached = _hub_cached(source, "model_index.json")
    return cached.parent if cached else None


def _looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.count("/") != 1


def missing_weights(spec: ModelSpec) -> list[str]:
    """What of ``spec`` is not on this machine, each with how to get it. Looks, never downloads."""
    out = []
    base = _base_dir(spec.base)
    if base is None or not (base / "model_index.json").exists():
        how = (f"local folder {spec.base} has no model_index.json" if _looks_local(spec.base)
               else f"huggingface-cli download {spec.base} (or pass a local diffusers folder)")
        out.append(f"SDXL base '{spec.base}': {how}")
    cn = _identitynet_dir(spec.identitynet)
    if cn is None or not (cn / "config.json").exists():
        how = (f"local folder {spec.identitynet} has no {IDENTITYNET_SUBFOLDER}/config.json" if _looks_local(spec.identitynet)
               else f"huggingface-cli download {spec.identitynet} --include '{IDENTITYNET_SUBFOLDER}/*'")
        out.append(f"IdentityNet '{spec.identitynet}': {how}")
    ip = _ip_adapter_file(spec.ip_adapter)
    if ip is None or not ip.is_file():
        how = (f"{spec.ip_adapter} holds no {IP_ADAPTER_FILE}" if _looks_local(spec.ip_adapter)
               else f"huggingface-cli download {spec.ip_adapter} {IP_ADAPTER_FILE}")
        out.append(f"IP-adapter '{spec.ip_adapter}': {how}")
    return out


# -- loading -------------------------------------------------------------------------------------

def pick_device(device: str | None = None):
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_ip_adapter_state(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path))
        state: dict = {"image_proj": {}, "ip_adapter": {}}
        for k, v in flat.items():
            part, _, rest = k.partition(".")
            if part in state:
                state[part][rest] = v
        return state
    return torch.load(path, map_location="cpu", weights_only=True)


def load_instantid(spec: ModelSpec, device: str | None = None, dtype=None) -> "InstantID":
    """Assemble SDXL + IdentityNet + IP-adapter from hub ids or local paths (fp16 on GPU, fp32 on CPU)."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    missing = missing_weights(spec)
    if missing:
        raise MissingWeightsError(f"model '{spec.name}' is missing weights:\n- " + "\n- ".join(missing))
    dev = pick_device(device)
    dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    controlnet = ControlNetModel.from_pretrained(str(_identitynet_dir(spec.identitynet)), dtype=dtype)
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(str(_base_dir(spec.base)), controlnet=controlnet,
                                                               dtype=dtype)
    state = load_ip_adapter_state(_ip_adapter_file(spec.ip_adapter))
    check_ip_adapter(state, pipe.unet)
    # our own runs save fp32 weights; the loader keeps a checkpoint's dtype, the pipeline runs in ``dtype``
    state = {part: {k: v.to(dtype) for k, v in d.items()} for part, d in state.items()}
    pipe.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    return InstantID(pipe, spec)


# -- conditioning the IdentityNet on face tokens ------------------------------------------------

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
class GenerationSettings:
    """Per-request controls. ``ip_scale`` is the paper's λ (weight of the face cross-attention)."""

    prompt: str
    negative_prompt: str = ""
    ip_scale: float = 0.8
    identitynet_scale: float = 0.8
    steps: int = 30
    guidance: float = 5.0
    seed: int = 0
    width: int = 1024
    height: int = 1024
    face_region_only: bool = False

    def validate(self) -> None:
        problems = []
        if not 0.0 <= self.ip_scale <= 1.5:
            problems.append(f"λ (ip_scale) must be within [0, 1.5], got {self.ip_scale}")
        if not 0.0 <= self.identitynet_scale <= 1.5:
            problems.append(f"IdentityNet strength must be within [0, 1.5], got {self.identitynet_scale}")
        if not 1 <= self.steps <= 150:
            problems.append(f"steps must be within [1, 150], got {self.steps}")
        if not 0.0 <= self.guidance <= 30.0:
            problems.append(f"guidance must be within [0, 30], got {self.guidance}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if not 64 <= v <= 2048 or v % 8:
                problems.append(f"{name} must be a multiple of 8 within [64, 2048], got {v}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class InstantID:
    """A loaded model. Calls are serialised with a lock: λ and the hooks live on the shared pipeline."""

    pipe: object
    spec: ModelSpec
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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

    def __call__(self, face_embedding, kps_image, settings: GenerationSettings, mask=None):
        import torch

        settings.validate()
        cfg = settings.guidance > 1.0
        # in the pipeline's dtype: the stock pipeline hands these to the Resampler as they are (fp16 on a GPU)
        embeds = self.embeds(face_embedding, cfg).to(self.pipe.unet.device, self.pipe.unet.dtype)
        generator = torch.Generator(device="cpu").manual_seed(int(settings.seed))
        with self._lock, torch.inference_mode():
            self.pipe.set_ip_adapter_scale(float(settings.ip_scale))
            tokens = self.face_tokens(embeds)
            with route_face_tokens(self.pipe.controlnet, tokens, mask if settings.face_region_only else None):
                result = self.pipe(
                    prompt=settings.prompt, negative_prompt=settings.negative_prompt or None, image=kps_image,
                    controlnet_conditioning_scale=float(settings.identitynet_scale), ip_adapter_image_embeds=[embeds],
                    num_inference_steps=int(settings.steps), guidance_scale=float(settings.guidance),
                    width=int(settings.width), height=int(settings.height), generator=generator,
                )
        return result.images[0]


class ModelCache:
    """Loaded models by name, loaded on first use; one lock so two requests never load the same model."""

    def __init__(self, device: str | None = None):
        self.device = device or os.environ.get("STUDIO_DEVICE") or None
        self._models: dict[str, InstantID] = {}
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec) -> InstantID:
        key = repr(spec.to_dict())
        with self._lock:
            if key not in self._models:
                self._models[key] = load_instantid(spec, self.device)
            return self._models[key]
