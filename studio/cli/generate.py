"""``python -m studio``: models, register-model, generate: weights and generation."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import face_pack_spec
from .common import author, open_workspace, print_result


def cmd_models(args) -> int:
    from ..dataset.faces import resolve_pack
    from ..models import download_weights

    if args.download == "clip":
        from ..evaluation.metrics import download_clip

        print_result({"downloaded": "clip", "file": download_clip()}, args.json)
        return 0
    if args.download and args.download != "antelopev2":
        folders = download_weights(args.download)
        print_result({"downloaded": args.download, "folders": folders}, args.json)
        return 0
    pack = resolve_pack(args.download or args.face_pack, download=bool(args.download))
    info = {"pack": pack.name, "detector": str(pack.detector), "recognizer": str(pack.recognizer), "note": pack.note}
    if args.download:
        print_result(info, args.json)
        return 0
    import onnxruntime

    from ..evaluation.metrics import ClipSpec, missing_clip
    from ..models import missing_weights
    from ..models.generate import registered_models

    info["onnxruntime_providers"] = onnxruntime.get_available_providers()  # what face analysis can run on
    info["models"] = {name: missing_weights(spec) or "ready"
                      for name, spec in registered_models(open_workspace(args)).items()}
    info["clip"] = missing_clip(ClipSpec()) or "ready"
    if args.json:
        print_result(info, True)
        return 0
    lines = [f"face pack: {pack.name} ({pack.note or pack.detector.parent})",
             f"onnxruntime providers: {', '.join(info['onnxruntime_providers'])}",
             f"evaluation CLIP ({ClipSpec().label}): {info['clip']}", "generation models:"]
    for name, state in info["models"].items():
        lines.append(f"  {name}: " + (state if state == "ready" else "missing\n" + "\n".join(f"    - {m}" for m in state)))
    print("\n".join(lines))
    return 0


def cmd_register_model(args) -> int:
    from ..models import FAMILIES, ModelSpec, family_of
    from ..models.generate import register_model

    if args.family == "InstantID" and not args.identitynet:
        raise ValueError("an InstantID model needs --identitynet")
    if args.family not in FAMILIES:
        raise ValueError(f"--family must be one of {', '.join(FAMILIES)}")
    spec = ModelSpec(args.name, base=args.base, identitynet=args.identitynet or "", ip_adapter=args.ip_adapter,
                     face_pack=args.trained_face_pack, lcm_lora=args.lcm_lora, family=args.family, lora=args.lora or "")
    register_model(open_workspace(args), spec)
    print_result({"registered": spec.to_dict(), "missing": family_of(spec).missing_weights(spec)}, args.json)
    return 0


def _style_names() -> list[str]:
    from ..models import STYLES

    return list(STYLES)


def cmd_generate(args) -> int:
    from ..models.generate import generate_run
    from ..images import load_rgb
    from ..models import GenerationSettings, ModelCache

    from ..models import DEMO_NEGATIVE_PROMPT, FAST_GUIDANCE, FAST_STEPS

    ws = open_workspace(args)
    if (args.reference is None) == (args.image_id is None):
        raise ValueError("give exactly one of --reference PHOTO or --image-id N")
    if args.pose is not None and args.pose_image_id is not None:
        raise ValueError("give at most one of --pose PHOTO or --pose-image-id N")
    scheduler = "LCM" if args.fast else args.scheduler
    steps = args.steps if args.steps is not None else (FAST_STEPS if scheduler == "LCM" else 30)
    guidance = args.guidance if args.guidance is not None else (FAST_GUIDANCE if scheduler == "LCM" else 5.0)
    negative = DEMO_NEGATIVE_PROMPT if args.negative_prompt is None else args.negative_prompt
    settings = GenerationSettings(prompt=args.prompt, negative_prompt=negative, ip_scale=args.ip_scale,
                                  identitynet_scale=args.identitynet_scale, steps=steps, guidance=guidance,
                                  seed=args.seed, width=args.width, height=args.height,
                                  face_region_only=args.face_region_only, long_side=args.long_side,
                                  face_margin=args.face_margin, style=args.style, scheduler=scheduler)
    note, samples, run_id, _ = generate_run(
        ws, ModelCache(args.device), args.model, settings, face_pack=args.face_pack,
        rgb=load_rgb(args.reference).rgb if args.reference is not None else None, image_id=args.image_id,
        face_index=args.face_index, pose_rgb=load_rgb(args.pose).rgb if args.pose is not None else None,
        pose_image_id=args.pose_image_id, sweep=args.sweep, allow_pack_mismatch=args.allow_pack_mismatch,
        author=author(args))
    print(note, file=sys.stderr)
    print_result([{"model": s.model, "lambda": s.ip_scale, "path": str(s.path), "id": s.generation_id, "run_id": run_id}
            for s in samples], args.json)
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("models", parents=[common],
                       help="what is on this machine (face pack, onnxruntime providers, each model's weights, the "
                            "evaluation's CLIP), or download weights")
    p.add_argument("--face-pack", default=face_pack_spec(), help="pack to resolve (default: auto)")
    p.add_argument("--download", choices=["antelopev2", "sdxl", "instantid", "crossfaceid", "ip-adapter-faceid",
                                          "lcm-lora", "clip"], default=None,
                   help="download into the hub cache: the antelopev2 face pack, the SDXL base (fp16 files only), "
                        "InstantID or CrossFaceID (IdentityNet + adapter), IP-Adapter-FaceID (adapter + its LoRA), "
                        "SDXL's LCM-LoRA (fast mode), or evaluation's default CLIP (ViT-L-14, openai)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("register-model", parents=[common],
                       help="add an InstantID or IP-Adapter-FaceID model (hub ids or local paths) for generation")
    p.add_argument("name", help="name shown in the Generate tab")
    p.add_argument("--family", default="InstantID", help="InstantID (default) or IP-Adapter-FaceID")
    p.add_argument("--base", default="stabilityai/stable-diffusion-xl-base-1.0", help="SDXL base: hub id or diffusers folder")
    p.add_argument("--identitynet", default=None,
                   help="InstantID: hub id or folder holding ControlNetModel/ (or the ControlNetModel folder)")
    p.add_argument("--ip-adapter", required=True,
                   help="hub id or folder holding the adapter (InstantID: ip-adapter.bin or pytorch_model.bin; "
                        "IP-Adapter-FaceID: ip-adapter-faceid_sdxl.bin), or the file")
    p.add_argument("--lora", default=None,
                   help="IP-Adapter-FaceID: 'embedded' (the LoRA its adapter file carries), or a hub id, folder or file "
                        "of a LoRA (ip-adapter-faceid_sdxl_lora.safetensors); default none")
    p.add_argument("--trained-face-pack", default="antelopev2",
                   help="face pack the model was trained on (default antelopev2, as the released models)")
    p.add_argument("--lcm-lora", default="latent-consistency/lcm-lora-sdxl",
                   help="LCM-LoRA of the SDXL base for fast mode: hub id, folder or file")
    p.set_defaults(func=cmd_register_model)

    p = sub.add_parser("generate", parents=[common], help="generate from a reference face + prompt with InstantID")
    p.add_argument("--model", action="append", required=True, help="registered model name (twice to compare two)")
    p.add_argument("--reference", type=Path, default=None, help="reference photo (its largest face unless --face-index)")
    p.add_argument("--image-id", type=int, default=None, help="or a workspace image id (its stored main face)")
    p.add_argument("--face-index", type=int, default=None, help="which face of the reference: 0 = largest, 1 = next, ...")
    p.add_argument("--pose", type=Path, default=None, help="optional photo whose face keypoints drive the pose")
    p.add_argument("--pose-image-id", type=int, default=None, help="or a workspace image as the pose reference")
    p.add_argument("--prompt", required=True, help="text prompt")
    p.add_argument("--negative-prompt", default=None, help="negative prompt (default: the official demo's)")
    p.add_argument("--style", default="(No style)", help="style template: " + ", ".join(_style_names()))
    p.add_argument("--scheduler", default="Euler", choices=["Euler", "DPM++ 2M Karras", "LCM"], help="sampler")
    p.add_argument("--fast", action="store_true", help="fast mode: LCM-LoRA + LCM scheduler, 5 steps, guidance 1.5")
    p.add_argument("--ip-scale", "--lambda", dest="ip_scale", type=float, default=0.8, help="λ, the face cross-attention weight (0-1.5)")
    p.add_argument("--sweep", default=None, help="comma-separated λ values instead of one, e.g. 0,0.25,0.5,0.75,1")
    p.add_argument("--identitynet-scale", type=float, default=0.8, help="IdentityNet (ControlNet) strength")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 30; 5 in fast mode)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default 5; 1.5 in fast mode)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same for every model and λ)")
    p.add_argument("--width", type=int, default=None, help="output width (default: the photo's framing)")
    p.add_argument("--height", type=int, default=None, help="output height (default: the photo's framing)")
    p.add_argument("--long-side", type=int, default=1280,
                   help="the photo's framing: long side in pixels, both sides multiples of 64 (default 1280)")
    p.add_argument("--face-region-only", action="store_true",
                   help="IdentityNet and face cross-attention act on the face region only")
    p.add_argument("--face-margin", type=float, default=0.0, help="grow the face region by this share per side")
    p.add_argument("--allow-pack-mismatch", action="store_true",
                   help="generate with a face pack other than the model's (recorded with every sample)")
    p.add_argument("--face-pack", default=face_pack_spec(), help="face models for the reference photo")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.set_defaults(func=cmd_generate)
