"""Tiny InstantID weights built locally from configs (sizes from diffusers' own SDXL tests).

``build_tiny_instantid(dir)`` writes the same three parts production uses, in the same layout:
a diffusers SDXL folder, ``ControlNetModel/`` (made with ``ControlNetModel.from_unet``) and an
``ip-adapter.bin`` in the official InstantID key layout (random weights), so the production
loader loads them unchanged.
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

TINY_RESAMPLER = dict(embed_dims=512, hidden_dims=64, depth=4, dim_head=64, num_queries=4, ff_mult=4)


def clip_tokenizer():
    """A real CLIP BPE tokenizer built offline from the merges file open_clip ships."""
    from transformers import CLIPTokenizer

    spec = importlib.util.find_spec("open_clip")
    bpe = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_chars = [chr(c) for c in cs]
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges,
                         model_max_length=77)


def tiny_components(seed: int = 0) -> dict:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64)
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, sample_size=128)
    text_cfg = CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
                              num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=49408,
                              hidden_act="gelu", projection_dim=32)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_cfg)
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModelWithProjection(text_cfg)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    tok = clip_tokenizer()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
            "tokenizer": tok, "tokenizer_2": tok, "scheduler": scheduler}


def random_ip_adapter(unet, seed: int = 0, scale: float = 0.2) -> dict:
    """Random weights in the official InstantID ip-adapter.bin key layout for ``unet``."""
    import torch

    from studio.models import ResamplerShape, ip_adapter_layout

    g = torch.Generator().manual_seed(seed)
    layout = ip_adapter_layout(unet, ResamplerShape(**TINY_RESAMPLER))
    return {part: {k: torch.randn(shape, generator=g) * scale for k, shape in keys.items()}
            for part, keys in layout.items()}


def build_tiny_instantid(root: Path, seed: int = 0) -> Path:
    """Write base/ (SDXL folder), ControlNetModel/ and ip-adapter.bin under ``root``; returns root."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionXLPipeline

    root = Path(root)
    if (root / "ip-adapter.bin").exists():
        return root
    parts = tiny_components(seed)
    torch.manual_seed(seed + 1)
    # before any IP-adapter touches the UNet; one conditioning downsample to match the tiny VAE (factor 2)
    controlnet = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=(16, 32))
    with torch.no_grad():  # from_unet zero-inits the output convs; give the IdentityNet a real effect
        for p in controlnet.parameters():
            if p.abs().sum() == 0 and p.ndim > 1:
                p.normal_(0, 0.05)
    StableDiffusionXLPipeline(**parts).save_pretrained(root / "base")
    controlnet.save_pretrained(root / "ControlNetModel")
    build_tiny_lora(parts["unet"], root / "lcm-lora", seed)
    torch.save(random_ip_adapter(parts["unet"], seed), root / "ip-adapter.bin")
    return root


def random_faceid(unet, seed: int = 0, scale: float = 0.2, lora_rank: int = 4) -> dict:
    """Random weights in the IP-Adapter-FaceID release layout for ``unet``, with the release's LoRA keys
    in ``ip_adapter`` as well (the studio accepts them and loads the LoRA from its own file)."""
    import torch

    from studio.models import faceid_layout

    g = torch.Generator().manual_seed(seed)
    state = {part: {k: torch.randn(shape, generator=g) * scale for k, shape in keys.items()}
             for part, keys in faceid_layout(unet).items()}
    state["image_proj"]["norm.weight"] = 1.0 + state["image_proj"]["norm.weight"]  # LayerNorm gains near 1
    context = unet.config.cross_attention_dim
    for n, width in enumerate(_cross_widths(unet)):  # the cross-attention layers' LoRA, random so it shows
        for proj in ("to_q", "to_k", "to_v", "to_out"):
            fan_in = context if proj in ("to_k", "to_v") else width
            state["ip_adapter"][f"{2 * n + 1}.{proj}_lora.down.weight"] = torch.randn(lora_rank, fan_in, generator=g) * 0.3
            state["ip_adapter"][f"{2 * n + 1}.{proj}_lora.up.weight"] = torch.randn(width, lora_rank, generator=g) * 0.3
    return state


def _cross_widths(unet) -> list[int]:
    from studio.models.faceid import cross_attention_widths

    return cross_attention_widths(unet)


def build_tiny_faceid(root: Path, base: Path, seed: int = 0) -> Path:
    """Write ip-adapter-faceid_sdxl.bin (the release's name and layout) for the tiny SDXL in ``base``."""
    import torch
    from diffusers import UNet2DConditionModel

    root = Path(root)
    if not (root / "ip-adapter-faceid_sdxl.bin").exists():
        unet = UNet2DConditionModel.from_pretrained(Path(base) / "unet")
        torch.save(random_faceid(unet, seed), root / "ip-adapter-faceid_sdxl.bin")
    return root


def build_tiny_lora(unet, out: Path, seed: int = 0) -> Path:
    """A LoRA for the tiny UNet's attention projections, saved by diffusers' own LoRA writer in the
    layout of SDXL's LCM-LoRA (``pytorch_lora_weights.safetensors``); random, so it changes the output."""
    import copy

    import torch
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed + 2)
    unet = copy.deepcopy(unet)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionXLPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet))
    return out


TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_tiny_clip(root: Path, seed: int = 0) -> Path:
    """A tiny open_clip model saved the way hub repos hold one (open_clip_config.json + weights file),
    so the studio loads it with the same ``ClipSpec(model=<folder>)`` path as a downloaded ViT-L/14."""
    import json

    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    root = Path(root)
    if (root / "open_clip_model.safetensors").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIP(**TINY_CLIP_CONFIG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "open_clip_model.safetensors"))
    (root / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CLIP_CONFIG,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    return root
