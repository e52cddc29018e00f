"""Cost of the training script's features, cached vs in-loop encoding, and the data pipeline's workers.

Same parts, same pairs, same steps, in this process (the cache comparison in two child processes,
for their peak memory):

1. ours: ``training/train_instantid.py``'s own ``main`` (data loader, condition drops, per-step
   seeded noise, metrics, stop checks, checkpoint logic) vs a minimal hand-written accelerate loop
   doing the same math on the same cached batches. Per-step time after warm-up steps; runs alternate;
   medians compared.
2. cached latents + text embeddings vs encoding in the loop: steps/s and peak memory of both (no goal).
3. the data pipeline (decode, keypoint image on the whole photo, resize/crop), face and random crops,
   with 2 loader workers vs 0: samples/s.

Tiny SDXL parts built from configs by default; ``--full-size`` builds random weights with SDXL 1.0's
architecture (UNet, both text encoders, VAE, a full IdentityNet and Resampler) for GPU runs.
``--family IP-Adapter-FaceID`` measures the other family's training (face projection + IP layers, no
IdentityNet) the same way.
Pairs: ``--manifest`` or a manifest built from assets/demo with the bundled face pack.
Last line: ``ratio: <minimal s/step / ours s/step>`` (goal >= 0.95).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def demo_manifest(root: Path) -> Path:
    """assets/demo through ingest -> analyze -> curate -> split -> pairs -> manifest (template captions)."""
    from studio.dataset.analyze import analyze
    from studio.dataset.curate import curate
    from studio.dataset.faces import resolve_pack
    from studio.dataset.ingest import ingest
    from studio.train.pairs import assign_splits, export_manifest, make_pairs
    from studio.workspace import Workspace

    ws = Workspace.open(root / "ws")
    ingest(ws, REPO / "assets" / "demo")
    analyze(ws, pack=resolve_pack("bundled"))
    curate(ws)
    assign_splits(ws, shares=(1.0, 0.0, 0.0))
    make_pairs(ws, per_image=3)
    export_manifest(ws, root / "pairs", missing_caption="template", allow_other_pack=True)
    return root / "pairs" / "train.jsonl"


def full_size_parts(root: Path, tokenizer_from: Path) -> Path:
    """An SDXL 1.0-shaped diffusers folder with random weights (the tokenizers copied from ``tokenizer_from``)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from studio.models import SDXL_UNET_CONFIG

    base = root / "sdxl-random"
    if (base / "model_index.json").exists():
        return base
    torch.manual_seed(0)
    UNet2DConditionModel(**SDXL_UNET_CONFIG).save_pretrained(base / "unet")
    AutoencoderKL(block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                  layers_per_block=2, sample_size=1024, scaling_factor=0.13025).save_pretrained(base / "vae")
    CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                                 projection_dim=768, hidden_act="quick_gelu")).save_pretrained(base / "text_encoder")
    CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                                               num_hidden_layers=32, projection_dim=1280, hidden_act="gelu")
                                ).save_pretrained(base / "text_encoder_2")
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                           timestep_spacing="leading").save_pretrained(base / "scheduler")
    for t in ("tokenizer", "tokenizer_2"):
        shutil.copytree(tokenizer_from / t, base / t)
    (base / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    return base


def script_argv(base, identitynet, ip_adapter, manifest, out, steps, resolution, batch, *extra) -> list[str]:
    """The script's arguments; ``identitynet`` None: the IP-Adapter-FaceID family (no IdentityNet)."""
    family = ["--identitynet", str(identitynet)] if identitynet is not None else ["--family", "IP-Adapter-FaceID"]
    return ["--pretrained_model_name_or_path", str(base), *family, "--ip_adapter",
            str(ip_adapter), "--train_data", str(manifest), "--output_dir", str(out), "--resolution", str(resolution),
            "--train_batch_size", str(batch), "--max_train_steps", str(steps), "--checkpointing_steps", str(10 ** 9),
            "--learning_rate", "1e-4", *extra]


def per_step(metrics: Path, warmup: int) -> float:
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    return (rows[-1]["elapsed_s"] - rows[warmup - 1]["elapsed_s"]) / (rows[-1]["step"] - rows[warmup - 1]["step"])


def minimal_loop(argv: list[str], steps: int, warmup: int) -> float:
    """The same math with nothing else: cached batches, noise, drops, forward, MSE, backward, AdamW."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator

    from training.data import FeatureCache, PairDataset, collate, read_manifest
    from training.train_instantid import encode_empty, freeze, load_models, parse_args

    args = parse_args(argv)
    acc = Accelerator()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
    parts = load_models(args)
    model = freeze(parts, dtype, acc.device)
    if args.gradient_checkpointing:
        parts["unet"].enable_gradient_checkpointing()
        if parts["controlnet"] is not None:
            parts["controlnet"].enable_gradient_checkpointing()
    samples = read_manifest(args.train_data)
    cache = FeatureCache(Path(args.output_dir) / "cache", samples, args.resolution)
    data = PairDataset(samples, args.resolution, cache)
    opt = torch.optim.AdamW(model.trainable(), lr=args.learning_rate, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(data, batch_size=args.train_batch_size, shuffle=True, collate_fn=collate)
    model, opt, loader = acc.prepare(model, opt, loader)
    empty = encode_empty(parts, acc.device, dtype)
    sched = parts["noise_scheduler"]
    done, t0 = 0, None
    while done < steps:
        for batch in loader:
            if done == warmup:
                if acc.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            lat = batch["latents"].float()
            noise = torch.randn_like(lat)
            t = torch.randint(0, sched.config.num_train_timesteps, (lat.shape[0],), device=lat.device)
            drop = torch.rand(lat.shape[0], device=lat.device)
            pe = torch.where((drop < 0.05)[:, None, None], empty[0], batch["prompt_embeds"].to(dtype))
            po = torch.where((drop < 0.05)[:, None], empty[1], batch["pooled"].to(dtype))
            face = torch.where((drop >= 0.05)[:, None] & (drop < 0.15)[:, None], 0.0, batch["face_embed"])
            pred = model(sched.add_noise(lat, noise, t).to(dtype), t, pe, po, batch["time_ids"].to(dtype), face,
                         batch["kps_image"].to(dtype))
            loss = F.mse_loss(pred.float(), noise)
            acc.backward(loss)
            acc.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done >= steps:
                break
    loss.item()
    if acc.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (steps - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--manifest", type=Path, help="pairs to train on (default: built from assets/demo)")
    parser.add_argument("--tiny-dir", type=Path, help="a built tiny InstantID (default: build one)")
    parser.add_argument("--full-size", action="store_true", help="random weights at SDXL 1.0's size (GPU)")
    parser.add_argument("--full-size-dir", type=Path, help="where to keep those weights between runs")
    parser.add_argument("--precision", default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--family", default="InstantID", choices=["InstantID", "IP-Adapter-FaceID"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: loop,cache,data")
    args = parser.parse_args()

    import torch

    from training.data import PairDataset, collate, read_manifest

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    manifest = args.manifest or demo_manifest(tmp)
    tiny = args.tiny_dir
    if tiny is None:
        from tiny_models import build_tiny_instantid

        tiny = build_tiny_instantid(tmp / "tiny")
    if args.full_size:
        base, identitynet, ip_adapter = full_size_parts(args.full_size_dir or tmp, tiny / "base"), "unet", "init"
    else:
        base, identitynet, ip_adapter = tiny / "base", tiny, tiny / "ip-adapter.bin"
    if args.family == "IP-Adapter-FaceID":
        from tiny_models import build_tiny_faceid

        (tmp / "faceid").mkdir(exist_ok=True)
        identitynet, ip_adapter = None, "init" if args.full_size else build_tiny_faceid(tmp / "faceid", base)
    extra = ["--gradient_checkpointing"] if args.gradient_checkpointing else []
    if args.precision:
        extra += ["--mixed_precision", args.precision]
    n = len(read_manifest(manifest))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{args.family}: {n} pairs, {'full-size (random SDXL 1.0 shapes)' if args.full_size else 'tiny'} parts on {device}, "
          f"resolution {args.resolution}, batch {args.batch}, {args.steps} steps ({args.warmup} warm-up)")
    skip = set(args.skip.split(",")) - {""}

    if "data" not in skip:
        samples = read_manifest(manifest)
        for crop in ("face", "random"):  # keypoints drawn on the whole photo, resized and cropped like it
            data = PairDataset(samples * max(1, 96 // n), 512, crop=crop)  # one epoch of about 96 samples
            for workers in (0, 2):
                loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=workers, collate_fn=collate)
                t0, seen = time.perf_counter(), 0
                for batch in loader:
                    seen += len(batch["caption"])
                print(f"data pipeline at 512 px, {crop} crops, {workers} workers: "
                      f"{seen / (time.perf_counter() - t0):.1f} samples/s")

    if "cache" not in skip:
        for label, flag in (("cached latents + embeddings", []), ("encoding in the loop", ["--encode_in_loop"])):
            out = tmp / f"cache-{len(flag)}"
            argv = script_argv(base, identitynet, ip_adapter, manifest, out, args.steps, args.resolution, args.batch,
                               *extra, *flag)
            r = subprocess.run([sys.executable, str(REPO / "training" / "train_instantid.py"), *argv],
                               capture_output=True, text=True, cwd=REPO)
            if r.returncode:
                sys.exit(r.stderr[-3000:])
            rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
            print(f"{label}: {1 / per_step(out / 'metrics.jsonl', args.warmup):.2f} steps/s, peak memory "
                  f"{rows[-1]['peak_memory_gb']:.2f} GB ({'GPU allocated' if device == 'cuda' else 'process RSS'})")

    from training.train_instantid import main as train_main

    ours, minimal = [], []
    for k in range(0 if "loop" in skip else args.rounds):
        out = tmp / f"ours-{k}"
        argv = script_argv(base, identitynet, ip_adapter, manifest, out, args.steps, args.resolution, args.batch, *extra)
        if k % 2:  # alternate which goes first: the second of a pair runs on a warmer process
            minimal.append(minimal_loop(argv + ["--output_dir", str(tmp / "ours-0")], args.steps, args.warmup))
        if train_main(argv) != 0:
            sys.exit("training failed")
        ours.append(per_step(out / "metrics.jsonl", args.warmup))
        if not k % 2:
            minimal.append(minimal_loop(argv, args.steps, args.warmup))
        print(f"round {k + 1}: ours {ours[-1] * 1000:.1f} ms/step, minimal loop {minimal[-1] * 1000:.1f} ms/step")
    if not ours:
        return
    o, m = statistics.median(ours), statistics.median(minimal)
    print(f"training step: ours {o * 1000:.1f} ms vs minimal accelerate loop {m * 1000:.1f} ms (median of {args.rounds})")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"ratio: {m / o:.3f}")


if __name__ == "__main__":
    main()
