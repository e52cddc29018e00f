#!/usr/bin/env python
"""Fine-tune InstantID on cross-training pairs (CrossFaceID, §4.2.1), with accelerate.

Trainable: the face Resampler, the IP-adapter's ``to_k_ip``/``to_v_ip`` and the IdentityNet
(a ControlNet). Frozen: the SDXL UNet, the VAE and both text encoders. The IdentityNet sees the
face tokens as its cross-attention context; the UNet sees the caption plus the face tokens through
the IP layers. Loss: MSE on the noise (or velocity). Launch it the way accelerate launches anything:

    accelerate launch --config_file training/configs/single_gpu.yaml training/train_instantid.py \\
        --pretrained_model_name_or_path stabilityai/stable-diffusion-xl-base-1.0 \\
        --identitynet InstantX/InstantID --ip_adapter InstantX/InstantID \\
        --train_data pairs/train.jsonl --output_dir out/crossfaceid

``--family IP-Adapter-FaceID`` fine-tunes the paper's other family instead: the face projection and
the IP layers are trained, everything else (no IdentityNet) is frozen, on the same manifest.

Final weights: ``<output_dir>/ip-adapter.bin`` (the official layout) and
``<output_dir>/ControlNetModel/``, which ``studio.models.load_instantid`` loads (IP-Adapter-FaceID:
``<output_dir>/ip-adapter-faceid_sdxl.bin``, the release's layout), plus a training card. Writing a file named ``STOP`` into the output dir (or SIGTERM) makes every process
save a checkpoint and exit cleanly; ``--resume_from_checkpoint latest`` goes on from there.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # studio/ and training/ as packages

from training.args import parse, recipe_file  # noqa: E402
from training.data import FeatureCache, ManifestError, PairDataset, collate, manifest_sha256, read_manifest  # noqa: E402



class _ToStdout(logging.Handler):
    """Progress lines on stdout, where the studio and ``accelerate launch``'s caller read them (the stream
    is looked up per line, so a caller that swaps stdout still gets them)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stdout.write(self.format(record) + "\n")
        sys.stdout.flush()


def _progress_logger():
    """accelerate's logger (it logs on the main process only) writing bare lines to stdout."""
    from accelerate.logging import get_logger

    base = logging.getLogger("train_instantid")
    if not base.handlers:
        base.addHandler(_ToStdout())
        base.setLevel(logging.INFO)
        base.propagate = False
    return get_logger("train_instantid")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse(argv)


# -- models --------------------------------------------------------------------------------------

class InstantIDTrainer(torch.nn.Module):
    """The UNet (frozen, with trainable IP layers and Resampler) and the IdentityNet in one module for DDP."""

    def __init__(self, unet, controlnet):
        super().__init__()
        self.unet, self.controlnet = unet, controlnet

    def forward(self, noisy, timesteps, prompt_embeds, pooled, time_ids, face_embeds, kps_image):
        image_embeds = [face_embeds[:, None, None, :]]  # (B, 1, 1, 512), as diffusers' IP-adapter takes them
        tokens = self.unet.encoder_hid_proj(image_embeds)[0]
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
        cond = {"text_embeds": pooled, "time_ids": time_ids}
        down, mid = self.controlnet(noisy, timesteps, encoder_hidden_states=tokens, controlnet_cond=kps_image,
                                    added_cond_kwargs=cond, return_dict=False)
        return self.unet(noisy, timesteps, encoder_hidden_states=prompt_embeds,
                         added_cond_kwargs={**cond, "image_embeds": image_embeds},
                         down_block_additional_residuals=list(down), mid_block_additional_residual=mid,
                         return_dict=False)[0]

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


class FaceIDTrainer(torch.nn.Module):
    """IP-Adapter-FaceID: the UNet (frozen) with its trainable face projection and IP layers; no IdentityNet.

    ``carry``: the starting checkpoint's ``ip_adapter`` keys nobody trains (the release's LoRA), saved back
    as they were so that the release's own loader, which loads every key, finds them."""

    controlnet = None

    def __init__(self, unet, carry: dict | None = None):
        super().__init__()
        self.unet, self.carry = unet, carry or {}

    def forward(self, noisy, timesteps, prompt_embeds, pooled, time_ids, face_embeds, kps_image=None):
        image_embeds = [face_embeds[:, None, None, :]]  # (B, 1, 1, 512), as diffusers' IP-adapter takes them
        return self.unet(noisy, timesteps, encoder_hidden_states=prompt_embeds,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids, "image_embeds": image_embeds},
                         return_dict=False)[0]

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def starting_adapter(source: str, locate, check, unet, label: str, file_name: str) -> dict:
    """The adapter file ``source`` names (``locate(source)``), loaded and checked against the UNet
    (``check``); a missing or ill-fitting file is named with what to pass instead."""
    from studio.models import CheckpointError, MissingWeightsError, load_ip_adapter_state

    path = locate(source)
    if path is None or not path.is_file():
        raise MissingWeightsError(f"{label} {source!r} has no {file_name} here; "
                                  "pass the file, a folder holding it, or 'init' to start a fresh adapter")
    state = load_ip_adapter_state(path)
    try:
        check(state, unet)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}. A base model without IP layers starts with --ip_adapter init") from None
    return state


def load_faceid_adapter(args, unet) -> dict:
    """The FaceID adapter to start from (a fresh one for 'init'), checked against the UNet; returns the
    keys to carry (the release's LoRA) after loading the rest into the UNet."""
    from studio.models import check_faceid
    from studio.models.faceid import FACEID_FILE, init_faceid_state, local_faceid_file
    from studio.models.faceid.layout import LORA_KEY

    state = init_faceid_state(unet, seed=args.seed) if args.ip_adapter == "init" else starting_adapter(
        args.ip_adapter, local_faceid_file, check_faceid, unet, "IP-Adapter-FaceID", FACEID_FILE)
    carry = {k: v for k, v in state["ip_adapter"].items() if LORA_KEY.fullmatch(k)}
    unet._load_ip_adapter_weights([{"image_proj": state["image_proj"],
                                    "ip_adapter": {k: v for k, v in state["ip_adapter"].items() if k not in carry}}])
    return carry


def load_models(args):
    """SDXL parts + IdentityNet + IP-adapter, resolved like the studio resolves models (local or hub cache)."""
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    from studio.models import (MissingWeightsError, ResamplerShape, check_ip_adapter, init_ip_adapter_state,
                               local_base_dir, local_identitynet_dir, local_ip_adapter_file)

    base = local_base_dir(args.pretrained_model_name_or_path)
    if base is None or not (base / "model_index.json").is_file():
        raise MissingWeightsError(f"SDXL base {args.pretrained_model_name_or_path!r} is not on this machine "
                                  "(a diffusers folder with model_index.json, or a downloaded hub id)")
    parts = {
        "tokenizer": AutoTokenizer.from_pretrained(base / "tokenizer"),
        "tokenizer_2": AutoTokenizer.from_pretrained(base / "tokenizer_2"),
        "text_encoder": CLIPTextModel.from_pretrained(base / "text_encoder"),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(base / "text_encoder_2"),
        "vae": AutoencoderKL.from_pretrained(base / "vae"),
        "unet": UNet2DConditionModel.from_pretrained(base / "unet"),
        "noise_scheduler": DDPMScheduler.from_pretrained(base / "scheduler"),
    }
    unet = parts["unet"]
    if args.family == "IP-Adapter-FaceID":
        parts["carry"] = load_faceid_adapter(args, unet)
        parts["controlnet"] = None
        return parts
    if args.identitynet == "unet":  # before the IP-adapter changes the UNet
        channels = tuple(int(c) for c in args.identitynet_conditioning_channels.split(","))
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
    else:
        cn_dir = local_identitynet_dir(args.identitynet)
        if cn_dir is None or not (cn_dir / "config.json").is_file():
            raise MissingWeightsError(f"IdentityNet {args.identitynet!r} has no ControlNetModel/config.json here; "
                                      "pass a folder, a downloaded hub id, or 'unet' to start from the UNet")
        controlnet = ControlNetModel.from_pretrained(cn_dir)
    if args.ip_adapter == "init":
        state = init_ip_adapter_state(unet, ResamplerShape(hidden_dims=args.resampler_dim,
                                                           num_queries=args.resampler_queries), seed=args.seed)
    else:
        state = starting_adapter(args.ip_adapter, local_ip_adapter_file, check_ip_adapter, unet, "IP-adapter",
                                 "ip-adapter.bin")
    unet._load_ip_adapter_weights([state])
    parts["controlnet"] = controlnet
    return parts


def freeze(parts: dict, weight_dtype: torch.dtype, device) -> InstantIDTrainer | FaceIDTrainer:
    """Frozen parts in ``weight_dtype`` (the VAE stays fp32, as InstantID trains); trainable parts in fp32."""
    unet, controlnet = parts["unet"], parts["controlnet"]
    for name in ("vae", "text_encoder", "text_encoder_2", "unet"):
        parts[name].requires_grad_(False)
    unet.to(device, dtype=weight_dtype)
    parts["vae"].to(device, dtype=torch.float32)
    for name in ("text_encoder", "text_encoder_2"):
        parts[name].to(device, dtype=weight_dtype)
    trainable = [unet.encoder_hid_proj] + [p for p in unet.attn_processors.values() if hasattr(p, "to_k_ip")]
    if controlnet is None:  # IP-Adapter-FaceID: the face projection and the IP layers, as the paper trains them
        for module in trainable:
            module.to(device, dtype=torch.float32)
            module.requires_grad_(True)
        return FaceIDTrainer(unet, parts.get("carry"))
    for module in [*trainable, controlnet]:
        module.to(device, dtype=torch.float32)
        module.requires_grad_(True)
    controlnet.train()
    return InstantIDTrainer(unet, controlnet)


def encode_prompts(parts: dict, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's two text encoders: penultimate hidden states concatenated, pooled output of the second."""
    embeds, pooled = [], None
    for tok, enc in ((parts["tokenizer"], parts["text_encoder"]), (parts["tokenizer_2"], parts["text_encoder_2"])):
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)
        out = enc(ids, output_hidden_states=True)
        embeds.append(out.hidden_states[-2])
        pooled = out[0]
    return torch.cat(embeds, dim=-1), pooled


def encode_images(vae, pixels: torch.Tensor) -> torch.Tensor:
    latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.sample()
    return latents * vae.config.scaling_factor


# -- saving --------------------------------------------------------------------------------------

def save_trainable(model: InstantIDTrainer | FaceIDTrainer, out: Path) -> None:
    """The trained parts in the family's released layout (what its loader, and the release's own code, read):
    InstantID ``ip-adapter.bin`` + ``ControlNetModel/``; IP-Adapter-FaceID ``ip-adapter-faceid_sdxl.bin``."""
    from studio.models import FAMILIES

    if isinstance(model, FaceIDTrainer):
        FAMILIES["IP-Adapter-FaceID"].save_official(out, model.unet, carry=model.carry)
    else:
        FAMILIES["InstantID"].save_official(out, model.unet, model.controlnet)


def load_trainable(model: InstantIDTrainer | FaceIDTrainer, src: Path) -> None:
    from diffusers import ControlNetModel

    from studio.models import copy_ip_adapter_state_

    if isinstance(model, FaceIDTrainer):
        from studio.models.faceid import FACEID_FILE, copy_faceid_state_

        copy_faceid_state_(model.unet, torch.load(src / FACEID_FILE, map_location="cpu", weights_only=True))
        return
    copy_ip_adapter_state_(model.unet, torch.load(src / "ip-adapter.bin", map_location="cpu", weights_only=True))
    loaded = ControlNetModel.from_pretrained(src / "ControlNetModel")
    model.controlnet.load_state_dict(loaded.state_dict())


def checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


# -- the loop ------------------------------------------------------------------------------------

STOP_CHECK_STEPS = 5  # how often several processes agree on a stop request


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A 63-bit seed per (run seed, step, micro-batch, process) from numpy's SeedSequence: a hash of the four,
    so no two micro-batches of a run share noise however many processes and accumulation steps there are."""
    import numpy as np

    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & (2 ** 63 - 1)


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """Noise, timesteps and condition drops of one micro-batch depend only on these: a resumed run repeats them."""
    return torch.Generator().manual_seed(step_seed(seed, step, micro, rank))


def main(argv: list[str] | None = None) -> int:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler

    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    from studio.workspace import writable_dir

    try:
        writable_dir(output_dir)
    except OSError as exc:
        print(f"error: cannot write to the output dir {output_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision,
                              log_with=None if args.report_to == "none" else args.report_to,
                              project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                                  logging_dir=str(output_dir / "logs")))
    set_seed(args.seed)
    logger = _progress_logger()
    try:
        samples = read_manifest(args.train_data, args.data_root)
        val_samples = read_manifest(args.validation_data)[: args.num_validation_images] if args.validation_data \
            else samples[: args.num_validation_images]
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    from studio.models import CheckpointError, MissingWeightsError

    try:
        parts = load_models(args)
    except (CheckpointError, MissingWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = freeze(parts, weight_dtype, accelerator.device)
    if args.gradient_checkpointing:
        parts["unet"].enable_gradient_checkpointing()
        if parts["controlnet"] is not None:
            parts["controlnet"].enable_gradient_checkpointing()

    # the trainable parts only go into checkpoints; the frozen SDXL is not copied every N steps
    def save_hook(models, weights, out_dir):
        if accelerator.is_main_process:
            for m in models:
                save_trainable(accelerator.unwrap_model(m), Path(out_dir) / "trainable")
        weights.clear()

    def load_hook(models, in_dir):
        for m in list(models):
            load_trainable(accelerator.unwrap_model(m), Path(in_dir) / "trainable")
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            print("error: --use_8bit_adam needs bitsandbytes: pip install bitsandbytes", file=sys.stderr)
            return 2
        optimizer_cls = bnb.optim.AdamW8bit
    else:
        optimizer_cls = torch.optim.AdamW
    optimizer = optimizer_cls(model.trainable(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                              weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)

    cache = None
    if args.crop == "random" and not args.encode_in_loop:
        logger.info("random crops: latents and text embeddings are encoded in the loop (a cache would fix the crop)")
    if not args.encode_in_loop and args.crop != "random":
        cache = FeatureCache(output_dir / "cache", samples, args.resolution, args.crop)
        fill_cache(accelerator, parts, cache, samples, args.resolution)
    dataset = PairDataset(samples, args.resolution, cache, crop=args.crop, seed=args.seed)
    sampler_gen = torch.Generator()
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.train_batch_size, collate_fn=collate, num_workers=args.dataloader_num_workers,
        sampler=torch.utils.data.RandomSampler(dataset, generator=sampler_gen), drop_last=False,
        generator=torch.Generator().manual_seed(args.seed))
    if args.num_train_epochs:  # epochs decide the length: the batches each process sees, per optimiser step
        per_process = math.ceil(math.ceil(len(dataset) / args.train_batch_size) / accelerator.num_processes)
        args.max_train_steps = args.num_train_epochs * math.ceil(per_process / args.gradient_accumulation_steps)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    empty = encode_empty(parts, accelerator.device, weight_dtype)
    if args.report_to != "none":
        accelerator.init_trackers(args.tracker_project_name, config=hyperparameters(args))
    if cache is not None:  # cached: the encoders leave the GPU (they come back for validation)
        for name in ("vae", "text_encoder", "text_encoder_2"):
            parts[name].to("cpu")

    global_step, first_epoch, skip = 0, 0, 0
    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    if args.resume_from_checkpoint:
        found = checkpoints(output_dir) if args.resume_from_checkpoint == "latest" else [Path(args.resume_from_checkpoint)]
        if found and found[-1].is_dir():
            logger.info(f"resuming from {found[-1]}")
            accelerator.load_state(str(found[-1]))
            global_step = int(found[-1].name.split("-")[1])
            first_epoch, skip = divmod(global_step, steps_per_epoch)
        elif args.resume_from_checkpoint != "latest":
            print(f"error: checkpoint {args.resume_from_checkpoint} does not exist", file=sys.stderr)
            return 2
        else:
            logger.info("no checkpoint yet: starting from step 0")

    stop = {"signal": False}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.update(signal=True))
    metrics = open(output_dir / "metrics.jsonl", "a", encoding="utf-8") if accelerator.is_main_process else None
    sample_log = open(output_dir / f"samples-rank{accelerator.process_index}.jsonl", "a", encoding="utf-8") \
        if args.log_samples else None
    scheduler = parts["noise_scheduler"]
    unwrapped = accelerator.unwrap_model(model)
    started, stopped, losses = time.time(), False, []
    logger.info(f"training {len(samples)} pairs on {accelerator.num_processes} process(es), "
                      f"{args.max_train_steps} steps, batch {args.train_batch_size} x {accelerator.num_processes} "
                      f"x {args.gradient_accumulation_steps}, {accelerator.mixed_precision} precision")
    pending = None

    def log_step(step: int, loss_t: torch.Tensor, ep: int, norm_t: torch.Tensor | None) -> None:
        losses.append(loss_t.item())
        if step % args.logging_steps == 0 or step == args.max_train_steps:
            row = {"step": step, "max_steps": args.max_train_steps, "loss": losses[-1],
                   "lr": lr_scheduler.get_last_lr()[0], "epoch": ep, "elapsed_s": round(time.time() - started, 3),
                   "peak_memory_gb": round(peak_memory_gb(accelerator.device), 3)}
            if norm_t is not None:
                row["grad_norm"] = float(norm_t)
            if args.report_to != "none":
                accelerator.log({k: row[k] for k in ("loss", "lr", "grad_norm", "epoch") if k in row}, step=step)
            if metrics:
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                logger.info(f"step {step}/{args.max_train_steps} loss {losses[-1]:.5f} lr {row['lr']:.3g}")

    epoch = first_epoch
    while global_step < args.max_train_steps and not stopped:
        sampler_gen.manual_seed(args.seed + epoch)  # one fixed order per epoch
        dataset.epoch = epoch  # and its crops and drawn faces
        loader = accelerator.skip_first_batches(dataloader, skip * args.gradient_accumulation_steps) if skip else dataloader
        skip = 0
        micro = 0
        for batch in loader:
            with accelerator.accumulate(model):
                try:
                    loss = training_step(args, accelerator, model, parts, scheduler, batch, empty, weight_dtype,
                                         step_generator(args.seed, global_step, micro, accelerator.process_index))
                except torch.OutOfMemoryError:
                    print(f"error: out of GPU memory at step {global_step + 1} (batch {args.train_batch_size} per "
                          f"device, resolution {args.resolution}, {accelerator.mixed_precision} precision). Lower "
                          "--train_batch_size or --resolution, add --gradient_checkpointing or --use_8bit_adam, keep "
                          "latents cached (no --encode_in_loop), or use the DeepSpeed ZeRO-2 config.",
                          file=sys.stderr)
                    return 3
                accelerator.backward(loss)
                if accelerator.sync_gradients:  # no clipping at 0 (the official trainer's), the norm still read
                    norm = accelerator.clip_grad_norm_(unwrapped.trainable(), args.max_grad_norm or math.inf)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            micro += 1
            if sample_log:
                sample_log.write(json.dumps({"step": global_step + 1, "lines": [samples[i].line for i in batch["index"].tolist()]}) + "\n")
            if not accelerator.sync_gradients:
                continue
            micro = 0
            global_step += 1
            # a step's loss is read one step later: reading it now would make the GPU wait for the host
            if pending is not None:
                log_step(*pending)
            pending = (global_step, accelerator.gather(loss.detach()[None]).mean(), epoch,
                       norm.detach() if isinstance(norm, torch.Tensor) else norm)
            if stop["signal"] or (output_dir / "STOP").exists():
                accelerator.set_trigger()
            # with one process the flag is local; several agree every few steps (the check is a collective)
            if accelerator.num_processes == 1:
                stopped = stop["signal"] or (output_dir / "STOP").exists()
            elif global_step % STOP_CHECK_STEPS == 0 or global_step >= args.max_train_steps:
                stopped = accelerator.check_trigger()
            if stopped or global_step >= args.max_train_steps or global_step % args.checkpointing_steps == 0 \
                    or (args.validation_steps and global_step % args.validation_steps == 0):
                log_step(*pending)  # before a checkpoint, validation or the end, the log is complete
                pending = None
            if global_step % args.checkpointing_steps == 0 or stopped:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if args.validation_steps and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                paths = validate(args, parts, unwrapped, val_samples, global_step, output_dir, weight_dtype,
                                 accelerator.device, cache is not None)
                if args.report_to != "none":
                    log_images(accelerator, paths, global_step)
                if metrics:
                    metrics.write(json.dumps({"step": global_step, "validation": [str(p) for p in paths]}) + "\n")
                    metrics.flush()
            if stopped or global_step >= args.max_train_steps:
                break
        epoch += 1

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if stopped:
            logger.info(f"stopped at step {global_step}: checkpoint saved; resume with --resume_from_checkpoint latest")
        else:
            save_trainable(unwrapped, output_dir)
            write_card(args, output_dir, global_step, losses, accelerator, len(samples), time.time() - started)
            logger.info(f"done: {global_step} steps; weights in {output_dir}")
        if metrics:
            metrics.write(json.dumps({"step": global_step, "status": "stopped" if stopped else "done"}) + "\n")
            metrics.close()
    if sample_log:
        sample_log.close()
    accelerator.end_training()
    return 0


def hyperparameters(args) -> dict:
    """The run's settings as trackers take them (numbers, text and booleans; nothing else)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}


def log_images(accelerator, paths: list[Path], step: int) -> None:
    """Validation images to every tracker, in its own way."""
    import numpy as np
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    if not images:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", np.stack(images), step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(im, caption=p.name) for im, p in zip(images, paths)]}, step=step)


def peak_memory_gb(device) -> float:
    """Peak GPU memory allocated on this device, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def training_step(args, accelerator, model, parts, scheduler, batch, empty, weight_dtype, g) -> torch.Tensor:
    """One micro-batch: encode (or read the cache), noise, drop conditions, predict, MSE."""
    device = accelerator.device
    bsz = batch["face_embed"].shape[0]
    if "latents" in batch:
        latents = batch["latents"].to(device, torch.float32)
        prompt_embeds, pooled = batch["prompt_embeds"].to(device), batch["pooled"].to(device)
    else:
        with torch.no_grad():
            latents = encode_images(parts["vae"], batch["pixel_values"]).float()
            prompt_embeds, pooled = encode_prompts(parts, batch["caption"], device)
    noise = torch.randn(latents.shape, generator=g).to(device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), generator=g).to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    r = torch.rand(bsz, generator=g).to(device)
    no_text = (r < args.drop_text) | ((r >= args.drop_text + args.drop_face) & (r < args.drop_text + args.drop_face + args.drop_both))
    no_face = (r >= args.drop_text) & (r < args.drop_text + args.drop_face + args.drop_both)
    prompt_embeds = torch.where(no_text[:, None, None], empty[0].to(prompt_embeds.dtype), prompt_embeds)
    pooled = torch.where(no_text[:, None], empty[1].to(pooled.dtype), pooled)
    face = torch.where(no_face[:, None], torch.zeros_like(batch["face_embed"]).to(device), batch["face_embed"].to(device))
    pred = model(noisy.to(weight_dtype), timesteps, prompt_embeds.to(weight_dtype), pooled.to(weight_dtype),
                 batch["time_ids"].to(device, weight_dtype), face, batch["kps_image"].to(device, weight_dtype))
    target = scheduler.get_velocity(latents, noise, timesteps) if scheduler.config.prediction_type == "v_prediction" else noise
    return F.mse_loss(pred.float(), target.float())


def fill_cache(accelerator, parts, cache: FeatureCache, samples, resolution: int) -> None:
    """Encode what the cache lacks; each process takes every N-th sample, then all wait."""
    todo = cache.missing(range(accelerator.process_index, len(samples), accelerator.num_processes))
    if todo:
        _progress_logger().info(f"caching latents and text embeddings of {len(samples)} samples")
    plain = PairDataset(samples, resolution, crop=cache.crop)
    with torch.no_grad():
        for idx in todo:
            im, geo = plain.geometry(idx)
            latents = encode_images(parts["vae"], plain.pixels(im, geo)[None])[0]
            embeds, pooled = encode_prompts(parts, [samples[idx].caption], accelerator.device)
            cache.save(idx, {"latents": latents.float(), "prompt_embeds": embeds[0], "pooled": pooled[0]})
    accelerator.wait_for_everyone()


def encode_empty(parts, device, weight_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty caption's embeddings: what a text-dropped sample is trained with."""
    with torch.no_grad():
        embeds, pooled = encode_prompts(parts, [""], device)
    return embeds[0].to(weight_dtype), pooled[0].to(weight_dtype)


def save_checkpoint(accelerator, output_dir: Path, step: int, keep: int) -> None:
    """``checkpoint-<step>`` appears whole or not at all: written under another name, renamed when every
    process has written its part (a run killed while saving resumes from the checkpoint before)."""
    if accelerator.is_main_process and keep:
        old = checkpoints(output_dir)
        for p in old[: max(0, len(old) - keep + 1)]:
            shutil.rmtree(p, ignore_errors=True)
    partial = output_dir / f"checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # what a killed save left
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = output_dir / f"checkpoint-{step}"
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    accelerator.wait_for_everyone()


def validate(args, parts, model: InstantIDTrainer | FaceIDTrainer, samples, step: int, output_dir: Path, weight_dtype, device,
             offloaded: bool) -> list[Path]:
    """Images at fixed seeds through the studio's own InstantID pipeline code."""
    import numpy as np
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLControlNetPipeline
    from PIL import Image

    from studio.models import FaceID, GenerationSettings, InstantID, ModelSpec

    if offloaded:
        for name in ("vae", "text_encoder", "text_encoder_2"):
            parts[name].to(device)
    common = dict(vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
                  tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer_2"], unet=model.unet,
                  scheduler=EulerDiscreteScheduler.from_config(parts["noise_scheduler"].config))
    if model.controlnet is None:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(**common)
        runner = FaceID(pipe, ModelSpec("validation", family="IP-Adapter-FaceID", identitynet=""))
    else:
        pipe = StableDiffusionXLControlNetPipeline(**common, controlnet=model.controlnet)
        runner = InstantID(pipe, ModelSpec("validation"))
    pipe.set_progress_bar_config(disable=True)
    dataset = PairDataset(samples, args.resolution)
    out_dir = output_dir / "validation"
    out_dir.mkdir(exist_ok=True)
    paths = []
    if model.controlnet is not None:
        model.controlnet.eval()
    autocast = torch.autocast(device.type, dtype=weight_dtype) if weight_dtype != torch.float32 else torch.autocast(
        device.type, enabled=False)
    with autocast:
        for k, s in enumerate(samples):
            item = dataset[k]
            kps = (item["kps_image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            settings = GenerationSettings(prompt=s.caption or "a photo of a person", ip_scale=1.0, identitynet_scale=1.0,
                                          steps=args.validation_inference_steps, seed=args.seed + k,
                                          width=args.resolution, height=args.resolution)
            image = runner(item["face_embed"].numpy(), Image.fromarray(kps), settings)
            path = out_dir / f"step-{step:06d}-{k}.png"
            image.save(path)
            paths.append(path)
    if model.controlnet is not None:
        model.controlnet.train()
    if offloaded:
        for name in ("vae", "text_encoder", "text_encoder_2"):
            parts[name].to("cpu")
    return paths


def write_card(args, output_dir: Path, steps: int, losses: list[float], accelerator, n_samples: int,
               seconds: float) -> None:
    """What was trained on what: arguments, data hash, split, steps, final loss, versions."""
    import accelerate
    import diffusers

    sidecar = Path(args.train_data).with_suffix(".manifest.json")
    manifest_info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    tail = losses[-min(len(losses), 10):]
    card = {
        "arguments": vars(args), "data_sha256": manifest_sha256(args.train_data), "pairs": n_samples,
        "split": manifest_info.get("split"), "persons": manifest_info.get("persons"),
        "steps": steps, "final_loss": losses[-1] if losses else None,
        "final_loss_mean_last_10": sum(tail) / len(tail) if tail else None,
        "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
        "seconds": round(seconds, 1), "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                                                   "accelerate": accelerate.__version__},
        "family": args.family,
        "recipe": {"name": args.recipe, "file": str(recipe_file(args.recipe)),
                   "sha256": hashlib.sha256(recipe_file(args.recipe).read_bytes()).hexdigest()} if args.recipe else None,
        "crop": args.crop, "epochs": args.num_train_epochs or None,
        "latents": "encoded in the loop" + (" (random crops)" if args.crop == "random" else "")
        if args.encode_in_loop or args.crop == "random" else "cached before training",
        "noise_seeds": "numpy SeedSequence of (seed, step, micro-batch, process)",
        "trackers": args.report_to,
        "weights": {"ip_adapter": "ip-adapter-faceid_sdxl.bin"} if args.family == "IP-Adapter-FaceID"
        else {"ip_adapter": "ip-adapter.bin", "identitynet": "ControlNetModel/"},
    }
    (output_dir / "training_card.json").write_text(json.dumps(card, indent=2, default=str))
    rows = "\n".join(f"| {k} | {v} |" for k, v in card.items() if k not in ("arguments", "versions", "weights"))
    parts = (f"IP-adapter from `{args.ip_adapter}`" if args.family == "IP-Adapter-FaceID"
             else f"IdentityNet from `{args.identitynet}`; IP-adapter from `{args.ip_adapter}`")
    (output_dir / "README.md").write_text(
        f"# {args.family} fine-tuned on cross-training pairs\n\n"
        f"Base: `{args.pretrained_model_name_or_path}`; {parts}.\n\n| | |\n|---|---|\n{rows}\n\n"
        "Arguments and versions: `training_card.json`.\n")


if __name__ == "__main__":
    sys.exit(main())
