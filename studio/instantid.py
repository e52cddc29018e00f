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
* the negative face embedding for classifier-free guidance is zeros, as InstantID does;
* "face region only" masks both the IdentityNet residuals (the hook) and the λ term of the face
  cross-attention (diffusers' own ``ip_adapter_masks``), as the official demo does.

Models on one SDXL base share it (:class:`SharedBase`): the adapter lives inside the UNet, so
each model keeps its own Resampler and IP processors and puts them in place for its call.
Fast mode is SDXL's LCM-LoRA through diffusers' LoRA loader with the LCM scheduler.

Production weights (SDXL base 1.0, InstantX/InstantID, the paper's fine-tuned model) and our own
training runs load through the same :func:`load_instantid`; so do the tiny test models.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
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


class OutOfMemory(ValueError):
    """The accelerator ran out of memory; the message says what to lower or turn on."""


#: The face pack the released InstantID / CrossFaceID weights were trained with.
RELEASED_FACE_PACK = "antelopev2"
LCM_LORA_SDXL = "latent-consistency/lcm-lora-sdxl"
LORA_FILE = "pytorch_lora_weights.safetensors"
#: The paper's release saves the adapter as ``pytorch_model.bin`` next to a ``controlnet/`` folder.
RELEASE_IP_ADAPTER_FILE = "pytorch_model.bin"
RELEASE_IDENTITYNET_SUBFOLDER = "controlnet"


@dataclass(frozen=True)
class ModelSpec:
    """Where one InstantID model's parts come from (hub ids or local paths), and the face pack it expects.

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


def local_identitynet_dir(source: str) -> Path | None:
    """The IdentityNet folder: the source itself, or its ``ControlNetModel/`` (InstantID) or ``controlnet/`` (release)."""
    p = _local(source)
    if p is not None:
        if (p / "config.json").exists():
            return p
        for sub in (IDENTITYNET_SUBFOLDER, RELEASE_IDENTITYNET_SUBFOLDER):
            if (p / sub / "config.json").exists():
                return p / sub
        return p / IDENTITYNET_SUBFOLDER
    for sub in (IDENTITYNET_SUBFOLDER, RELEASE_IDENTITYNET_SUBFOLDER):
        cached = _hub_cached(source, f"{sub}/config.json")
        if cached:
            return cached.parent
    return None


def local_ip_adapter_file(source: str) -> Path | None:
    """``ip-adapter.bin`` (InstantID layout) or ``pytorch_model.bin`` (the paper's release layout)."""
    p = _local(source)
    if p is not None:
        if p.is_file():
            return p
        for name in (IP_ADAPTER_FILE, RELEASE_IP_ADAPTER_FILE):
            if (p / name).is_file():
                return p / name
        return p / IP_ADAPTER_FILE
    for name in (IP_ADAPTER_FILE, RELEASE_IP_ADAPTER_FILE):
        cached = _hub_cached(source, name)
        if cached:
            return cached
    return None


def local_base_dir(source: str) -> Path | None:
    """The SDXL base folder (a folder, or a hub id already in the cache), None when it is not on this machine."""
    p = _local(source)
    if p is not None:
        return p
    cached = _hub_cached(source, "model_index.json")
    return cached.parent if cached else None


def _lora_file(source: str) -> Path | None:
    p = _local(source)
    if p is not None:
        return p if p.is_file() else p / LORA_FILE
    return _hub_cached(source, LORA_FILE)


def _looks_local(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.count("/") != 1


#: ``hf download`` filters per part, so that only what the studio loads is fetched (SDXL in fp16:
#: about 7 GB instead of the whole repository).
BASE_FILES = ("model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*", "text_encoder/config.json",
              "text_encoder_2/config.json", "unet/config.json", "vae/config.json", "text_encoder/model.fp16.safetensors",
              "text_encoder_2/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
              "vae/diffusion_pytorch_model.fp16.safetensors")
IDENTITYNET_FILES = (f"{IDENTITYNET_SUBFOLDER}/*", f"{RELEASE_IDENTITYNET_SUBFOLDER}/*")
IP_ADAPTER_FILES = (IP_ADAPTER_FILE, RELEASE_IP_ADAPTER_FILE)

#: ``python -m studio models --download NAME``: what each name fetches into the hub cache.
DOWNLOADS = {
    "sdxl": [(SDXL_BASE, BASE_FILES)],
    "instantid": [(INSTANTID_REPO, IDENTITYNET_FILES + IP_ADAPTER_FILES)],
    "crossfaceid": [(CROSSFACEID_REPO, IDENTITYNET_FILES + IP_ADAPTER_FILES)],
    "lcm-lora": [(LCM_LORA_SDXL, (LORA_FILE,))],
}


def hf_command(repo: str, files: tuple[str, ...]) -> str:
    return f"hf download {repo} --include " + " ".join(f"'{f}'" for f in files)


_WHERE = ("into the hub cache ($HF_HOME, where the studio looks), or add --local-dir DIR and register the model "
          "with that folder")


def missing_weights(spec: ModelSpec) -> list[str]:
    """What of ``spec`` is not on this machine, each with how to get it. Looks, never downloads."""
    out = []
    base = local_base_dir(spec.base)
    if base is None or not (base / "model_index.json").exists():
        how = (f"local folder {spec.base} has no model_index.json" if _looks_local(spec.base)
               else f"{hf_command(spec.base, BASE_FILES)} ({_WHERE}; for {SDXL_BASE}: python -m studio models --download sdxl)")
        out.append(f"SDXL base '{spec.base}': {how}")
    cn = local_identitynet_dir(spec.identitynet)
    if cn is None or not (cn / "config.json").exists():
        how = (f"local folder {spec.identitynet} holds no config.json, {IDENTITYNET_SUBFOLDER}/config.json "
               f"(InstantID layout) or {RELEASE_IDENTITYNET_SUBFOLDER}/config.json (CrossFaceID release layout)"
               if _looks_local(spec.identitynet) else f"{hf_command(spec.identitynet, IDENTITYNET_FILES)} ({_WHERE})")
        out.append(f"IdentityNet '{spec.identitynet}': {how}")
    ip = local_ip_adapter_file(spec.ip_adapter)
    if ip is None or not ip.is_file():
        how = (f"{spec.ip_adapter} holds neither {IP_ADAPTER_FILE} (InstantID layout) nor {RELEASE_IP_ADAPTER_FILE} "
               f"(CrossFaceID release layout)" if _looks_local(spec.ip_adapter)
               else f"{hf_command(spec.ip_adapter, IP_ADAPTER_FILES)} ({_WHERE})")
        out.append(f"IP-adapter '{spec.ip_adapter}': {how}")
    return out


def missing_lcm_lora(spec: ModelSpec) -> str | None:
    """Why fast mode cannot run for ``spec`` (its LCM-LoRA is not here), or None."""
    f = _lora_file(spec.lcm_lora)
    if f is not None and f.is_file():
        return None
    how = (f"{spec.lcm_lora} holds no {LORA_FILE}" if _looks_local(spec.lcm_lora)
           else f"{hf_command(spec.lcm_lora, (LORA_FILE,))} (or: python -m studio models --download lcm-lora)")
    return f"fast mode needs the LCM-LoRA '{spec.lcm_lora}' of the SDXL base: {how}"


def download_weights(name: str) -> list[str]:
    """Fetch one of :data:`DOWNLOADS` into the hub cache with huggingface_hub; returns the local folders."""
    from huggingface_hub import snapshot_download

    if name not in DOWNLOADS:
        raise ValueError(f"unknown download {name!r}; choose from {sorted(DOWNLOADS)}")
    folders = []
    for repo, files in DOWNLOADS[name]:
        try:
            folders.append(snapshot_download(repo_id=repo, allow_patterns=list(files)))
        except Exception as exc:  # offline, gated, not found: say what failed and the command to run elsewhere
            raise MissingWeightsError(f"download of {repo} failed ({exc.__class__.__name__}: {str(exc)[:200]}). On a "
                                      f"machine with internet run: {hf_command(repo, files)}") from None
    return folders


# -- loading -------------------------------------------------------------------------------------

def pick_device(device: str | None = None):
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


class SharedBase:
    """One SDXL base in memory (UNet, VAE, text encoders) for every model built on it.

    The IP-adapter lives inside the UNet, so models sharing it take turns: each keeps its own
    Resampler and IP attention processors and puts them in place under ``lock`` for its call.
    """

    def __init__(self, components: dict, force_zeros_for_empty_prompt: bool = True):
        self.components = components
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.lock = threading.RLock()
        self.lcm_lora: str | None = None  # the LoRA source loaded into the UNet, if any
        self.models = 0


def load_base(source: str, device: str | None = None, dtype=None, vae_tiling: bool = False) -> SharedBase:
    """SDXL's parts from a hub id or folder (the fp16 variant when only that was downloaded)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    base_dir = local_base_dir(source)
    if base_dir is None or not (base_dir / "model_index.json").exists():
        raise MissingWeightsError(f"SDXL base '{source}' is not on this machine")
    dev = pick_device(device)
    dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    unet_dir = base_dir / "unet"
    variant = ("fp16" if not any(unet_dir.glob("diffusion_pytorch_model.safetensors*"))
               and any(unet_dir.glob("diffusion_pytorch_model.fp16.*")) else None)
    sdxl = StableDiffusionXLPipeline.from_pretrained(str(base_dir), dtype=dtype, variant=variant)
    sdxl.to(dev)
    if vae_tiling:
        sdxl.vae.enable_tiling()
    parts = {k: sdxl.components[k] for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                                              "unet", "scheduler")}
    return SharedBase(parts, bool(sdxl.config.get("force_zeros_for_empty_prompt", True)))


@dataclass
class AdapterSlot:
    """One model's Resampler and IP attention processors, to put into a shared UNet before its call."""

    projection: object
    processors: dict


def load_instantid(spec: ModelSpec, device: str | None = None, dtype=None, base: SharedBase | None = None,
                   offload: bool = False, vae_tiling: bool = False) -> "InstantID":
    """Assemble SDXL + IdentityNet + IP-adapter from hub ids or local paths (fp16 on GPU, fp32 on CPU).

    ``base``: an SDXL already in memory to build on (see :class:`ModelCache`); ``offload``:
    diffusers' model CPU offload, for 12-16 GB GPUs (needs an accelerator).
    """
    import torch
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    missing = missing_weights(spec)
    if missing:
        raise MissingWeightsError(f"model '{spec.name}' is missing weights:\n- " + "\n- ".join(missing))
    dev = pick_device(device)
    if offload and dev.type == "cpu":
        raise ValueError("CPU offload moves parts between the GPU and the CPU: it needs a GPU (device cuda)")
    dtype = dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
    if base is None:
        base = load_base(spec.base, "cpu" if offload else str(dev), dtype, vae_tiling)
    state = load_ip_adapter_state(local_ip_adapter_file(spec.ip_adapter))
    check_ip_adapter(state, base.components["unet"])
    # our own runs save fp32 weights; the loader keeps a checkpoint's dtype, the pipeline runs in ``dtype``
    state = {part: {k: v.to(dtype) for k, v in d.items()} for part, d in state.items()}
    controlnet = ControlNetModel.from_pretrained(str(local_identitynet_dir(spec.identitynet)), dtype=dtype)
    pipe = StableDiffusionXLControlNetPipeline(**base.components, controlnet=controlnet,
                                               force_zeros_for_empty_prompt=base.force_zeros_for_empty_prompt)
    with base.lock:
        if pipe.unet.encoder_hid_proj is not None:  # another model's adapter is in the shared UNet
            pipe.unload_ip_adapter()
        pipe.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
        if offload:
            pipe.enable_model_cpu_offload(device=dev)
        else:
            pipe.to(dev)
        slot = AdapterSlot(pipe.unet.encoder_hid_proj, {name[: -len(".processor")]: proc for name, proc in
                                                        pipe.unet.attn_processors.items()
                                                        if not name.startswith("encoder_hid_proj")})
        base.models += 1
    pipe.set_progress_bar_config(disable=True)
    return InstantID(pipe, spec, slot, base)


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


# -- per-request settings ------------------------------------------------------------------------

#: The official demo's default negative prompt (its weighting syntax is passed on as plain text, as there).
DEMO_NEGATIVE_PROMPT = ("(lowres, low quality, worst quality:1.2), (text:1.2), watermark, (frame:1.2), deformed, ugly, "
                        "deformed eyes, blur, out of focus, blurry, deformed cat, deformed, photo, anthropomorphic cat, "
                        "monochrome, pet collar, gun, weapon, blue, 3d, drones, drone, buildings in background, green")

#: Named styles (the official demo's names; our wording): prompt template with ``{prompt}``, negative prompt.
STYLES: dict[str, tuple[str, str]] = {
    "(No style)": ("{prompt}", ""),
    "Watercolor": ("watercolor painting of {prompt}, soft washes of colour, paper texture, loose brush strokes",
                   "photograph, photorealistic, 3d render, hard edges"),
    "Film Noir": ("film noir still of {prompt}, black and white, hard shadows, dramatic low-key lighting, 1940s",
                  "colour, bright, cheerful, cartoon"),
    "Neon": ("{prompt} lit by neon signs at night, magenta and cyan glow, wet street reflections",
             "daylight, dull colours, flat lighting"),
    "Jungle": ("{prompt} in a dense tropical jungle, lush leaves, humid air, sunbeams through the canopy",
               "city, buildings, desert, snow"),
    "Mars": ("{prompt} on the surface of Mars, red dust, rocky plains, thin pale sky, science fiction",
             "green grass, trees, ocean, earth landscape"),
    "Vibrant Color": ("{prompt}, vivid saturated colours, bold complementary palette, bright studio light",
                      "black and white, muted, desaturated, dark"),
    "Snow": ("{prompt} in falling snow, winter clothing, frosty air, soft overcast light",
             "summer, beach, heat, green foliage"),
    "Line art": ("clean line art drawing of {prompt}, black ink outlines on white, minimal shading",
                 "photograph, colour, texture, gradient, 3d"),
}
DEFAULT_STYLE = "(No style)"
SCHEDULERS = ("Euler", "DPM++ 2M Karras", "LCM")
#: The official demo's fast mode: LCM-LoRA with the LCM scheduler, 5 steps, guidance 1.5.
FAST_STEPS, FAST_GUIDANCE = 5, 1.5


def apply_style(style: str, prompt: str, negative: str) -> tuple[str, str]:
    """The prompt inside the style's template; the style's negative prompt before the user's."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {list(STYLES)}")
    template, style_negative = STYLES[style]
    return template.replace("{prompt}", prompt), ", ".join(p for p in (style_negative, negative) if p)


def photo_framing(width: int, height: int, long_side: int = 1280, multiple: int = 64) -> tuple[int, int]:
    """The official demo's output size for a photo: short side to 1024, then the long side to
    ``long_side`` (rounded as it rounds), each side down to a multiple of ``multiple``; aspect kept."""
    r = 1024 / min(width, height)
    w, h = round(r * width), round(r * height)
    r = long_side / max(w, h)
    return max(multiple, round(r * w) // multiple * multiple), max(multiple, round(r * h) // multiple * multiple)


@dataclass
class GenerationSettings:
    """Per-request controls. ``ip_scale`` is the paper's λ (weight of the face cross-attention).

    ``width``/``height`` None: the official framing (the reference or pose photo at ``long_side``,
    multiples of 64, aspect kept); given: that size, the photo scaled to cover it and centred.
    ``face_region_only``: both the IdentityNet and the face cross-attention act inside the face
    box (grown by ``face_margin`` of its size on each side). ``scheduler`` "LCM" is fast mode.
    """

    prompt: str
    negative_prompt: str = DEMO_NEGATIVE_PROMPT
    ip_scale: float = 0.8
    identitynet_scale: float = 0.8
    steps: int = 30
    guidance: float = 5.0
    seed: int = 0
    width: int | None = None
    height: int | None = None
    face_region_only: bool = False
    long_side: int = 1280
    face_margin: float = 0.0
    style: str = DEFAULT_STYLE
    scheduler: str = "Euler"

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
        if (self.width is None) != (self.height is None):
            problems.append("give both width and height, or neither (the photo's framing)")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (not 64 <= v <= 2048 or v % 8):
                problems.append(f"{name} must be a multiple of 8 within [64, 2048], got {v}")
        if not 64 <= self.long_side <= 2048 or self.long_side % 64:
            problems.append(f"long side must be a multiple of 64 within [64, 2048], got {self.long_side}")
        if not 0.0 <= self.face_margin <= 1.0:
            problems.append(f"face margin must be within [0, 1] (a share of the face box), got {self.face_margin}")
        if self.style not in STYLES:
            problems.append(f"unknown style {self.style!r}; choose from {list(STYLES)}")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"unknown scheduler {self.scheduler!r}; choose from {list(SCHEDULERS)}")
        if problems:
            raise ValueError("; ".join(problems))


def make_scheduler(name: str, config):
    """A fresh scheduler of the named kind from the base's scheduler config (Euler: the demo's choice)."""
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

    if name == "Euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "DPM++ 2M Karras":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       use_karras_sigmas=True)
    if name == "LCM":
        return LCMScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}; choose from {list(SCHEDULERS)}")


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
            f = _lora_file(self.spec.lcm_lora)
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


def _env_dtype():
    """``STUDIO_DTYPE`` (float16 | bfloat16 | float32): the precision models load in (default: fp16 on a GPU)."""
    import torch

    name = os.environ.get("STUDIO_DTYPE", "").strip()
    if not name:
        return None
    if name not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"STUDIO_DTYPE must be float16, bfloat16 or float32, got {name!r}")
    return getattr(torch, name)


class ModelCache:
    """Loaded models, least recently used evicted beyond ``max_models``; models on one SDXL base share it.

    A model's load holds only that model's lock (and its base's while the base loads), so a
    long load never blocks requests to models already loaded.
    """

    def __init__(self, device: str | None = None, max_models: int | None = None, dtype=None,
                 offload: bool | None = None, vae_tiling: bool | None = None):
        self.device = device or os.environ.get("STUDIO_DEVICE") or None
        self.max_models = max_models or int(os.environ.get("STUDIO_MAX_MODELS", "2"))
        self.dtype = dtype or _env_dtype()
        self.offload = offload if offload is not None else os.environ.get("STUDIO_OFFLOAD", "") == "model"
        self.vae_tiling = vae_tiling if vae_tiling is not None else os.environ.get("STUDIO_VAE_TILING", "") == "1"
        self._models: OrderedDict[str, InstantID] = OrderedDict()
        self._bases: dict[str, SharedBase] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the dicts only, never held through a load

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def loaded(self) -> list[str]:
        with self._lock:
            return [m.spec.name for m in self._models.values()]

    def get(self, spec: ModelSpec) -> InstantID:
        key = repr(spec.weights_key() | {"lcm_lora": spec.lcm_lora})
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        missing = missing_weights(spec)
        if missing:
            raise MissingWeightsError(f"model '{spec.name}' is missing weights:\n- " + "\n- ".join(missing))
        with self._key_lock(key):
            with self._lock:
                if key in self._models:
                    return self._models[key]
            base = None if self.offload else self._base(spec)
            model = load_instantid(spec, self.device, self.dtype, base=base, offload=self.offload,
                                   vae_tiling=self.vae_tiling)
            with self._lock:
                self._models[key] = model
                while len(self._models) > self.max_models:
                    _, old = self._models.popitem(last=False)
                    old.base.models -= 1
                    for k, b in list(self._bases.items()):
                        if b is old.base and b.models <= 0:
                            del self._bases[k]
            return model

    def _base(self, spec: ModelSpec) -> SharedBase:
        key = f"base:{spec.base}"
        with self._lock:
            if key in self._bases:
                return self._bases[key]
        with self._key_lock(key):
            with self._lock:
                if key in self._bases:
                    return self._bases[key]
            base = load_base(spec.base, self.device, self.dtype, self.vae_tiling)
            with self._lock:
                self._bases[key] = base
            return base
