"""The training script's options, in a module of their own: the studio checks a run's extra options
against this parser before a worker starts (no torch needed for that)."""
from __future__ import annotations

import argparse
from pathlib import Path

RECIPES = Path(__file__).resolve().parent / "recipes"

DESCRIPTION = "Fine-tune InstantID on cross-training pairs (CrossFaceID, §4.2.1), with accelerate."


def build_parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = parser_class(description=DESCRIPTION)
    p.add_argument("--recipe", default=None,
                   help="defaults from a recipe: a name in training/recipes (crossfaceid: the paper's) or a YAML file; "
                        "options given here win")
    g = p.add_argument_group("models")
    g.add_argument("--family", choices=["InstantID", "IP-Adapter-FaceID"], default="InstantID",
                   help="InstantID (Resampler + IP layers + IdentityNet trained) or IP-Adapter-FaceID (face projection "
                        "+ IP layers trained, no IdentityNet)")
    g.add_argument("--pretrained_model_name_or_path", required=True, help="SDXL base: a diffusers folder or hub id")
    g.add_argument("--identitynet", default="unet",
                   help="a folder holding ControlNetModel/ (or that folder), a hub id, or 'unet' to start from the UNet")
    g.add_argument("--identitynet_conditioning_channels", default="16,32,96,256",
                   help="conditioning embedding channels when the IdentityNet starts from the UNet")
    g.add_argument("--ip_adapter", default="init",
                   help="the adapter file (InstantID: ip-adapter.bin; IP-Adapter-FaceID: ip-adapter-faceid_sdxl.bin) or "
                        "a folder/hub id holding it, or 'init' for a fresh adapter")
    g.add_argument("--resampler_dim", type=int, default=1280, help="Resampler width for --ip_adapter init")
    g.add_argument("--resampler_queries", type=int, default=16, help="face tokens for --ip_adapter init")
    g = p.add_argument_group("data")
    g.add_argument("--train_data", required=True, help="pair manifest (JSONL, `python -m studio manifest`)")
    g.add_argument("--data_root", default=None, help="paths in the manifest are relative to this (default: its folder)")
    g.add_argument("--validation_data", default=None, help="manifest whose first lines give the validation images")
    g.add_argument("--resolution", type=int, default=512)
    g.add_argument("--crop", choices=["random", "center", "face"], default="face",
                   help="the training square of the resized photo: random (the official trainer's), center, or around "
                        "the face (default, steady for short runs); random crops are encoded in the loop, never cached")
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g.add_argument("--encode_in_loop", action="store_true",
                   help="run the VAE and text encoders every step instead of caching latents and embeddings first")
    g.add_argument("--drop_text", type=float, default=0.05, help="share of samples trained without the caption")
    g.add_argument("--drop_face", type=float, default=0.05, help="share trained without the face embedding")
    g.add_argument("--drop_both", type=float, default=0.05, help="share trained without either")
    g = p.add_argument_group("optimisation")
    g.add_argument("--output_dir", required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--train_batch_size", type=int, default=2, help="per device")
    g.add_argument("--max_train_steps", type=int, default=1000)
    g.add_argument("--num_train_epochs", type=int, default=0,
                   help="train this many passes over the manifest (sets the step count; 0: --max_train_steps)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--learning_rate", type=float, default=1e-5)
    g.add_argument("--lr_scheduler", default="constant_with_warmup",
                   help="linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup")
    g.add_argument("--lr_warmup_steps", type=int, default=0)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=0.01)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping (0: none, as the official trainer)")
    g.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' AdamW8bit")
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                   help="default: what `accelerate launch` / its config says")
    g = p.add_argument_group("checkpoints, validation, logging")
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=3, help="keep this many checkpoints")
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    g.add_argument("--validation_steps", type=int, default=0, help="validation images every N steps (0: none)")
    g.add_argument("--num_validation_images", type=int, default=2)
    g.add_argument("--validation_inference_steps", type=int, default=30)
    g.add_argument("--logging_steps", type=int, default=1)
    g.add_argument("--report_to", choices=["none", "tensorboard", "wandb", "all"], default="none",
                   help="accelerate's trackers: loss, lr, grad norm, validation images and the run's settings "
                        "(TensorBoard event files under <output_dir>/logs; wandb offline with WANDB_MODE=offline)")
    g.add_argument("--tracker_project_name", default="crossfaceid-studio")
    g.add_argument("--log_samples", action="store_true",
                   help="record which manifest lines each process trained on, per step (samples-rank<N>.jsonl)")
    return p


def recipe_file(name: str) -> Path:
    """A recipe by name (``training/recipes/<name>.yaml``) or path."""
    path = RECIPES / f"{name}.yaml" if "/" not in name and not name.endswith((".yaml", ".yml")) else Path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
        raise ValueError(f"recipe {name!r} not found (known: {known}, or a YAML file)")
    return path


def recipe_defaults(p: argparse.ArgumentParser, name: str) -> dict:
    """A recipe's ``arguments``, checked against the parser: an unknown option or a bad value is named."""
    import yaml

    data = yaml.safe_load(recipe_file(name).read_text(encoding="utf-8")) or {}
    values = data.get("arguments") or {}
    known = {a.dest: a for a in p._actions}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"recipe {name!r}: unknown option(s) {unknown}")
    for key, value in values.items():
        action = known[key]
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"recipe {name!r}: {key} must be one of {list(action.choices)}, got {value!r}")
        if action.type is not None and not isinstance(value, bool):
            values[key] = action.type(value)
    return values


def parse(argv: list[str] | None, parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser
          ) -> argparse.Namespace:
    """Parse the script's options, a recipe's values filling what the command line leaves out."""
    p = build_parser(parser_class)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe", default=None)
    first, _ = pre.parse_known_args(argv)
    if first.recipe:
        try:
            p.set_defaults(**recipe_defaults(p, first.recipe))
        except ValueError as exc:
            p.error(str(exc))
    return check(p, p.parse_args(argv))


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """What the parser alone cannot say: the three condition drops are shares that sum to at most 1."""
    drops = args.drop_text + args.drop_face + args.drop_both
    if not 0 <= drops <= 1 or min(args.drop_text, args.drop_face, args.drop_both) < 0:
        p.error(f"condition drops must be non-negative and sum to at most 1, got {drops}")
    if args.num_train_epochs < 0 or args.max_grad_norm < 0:
        p.error("--num_train_epochs and --max_grad_norm are 0 or more")
    return args
