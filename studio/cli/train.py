"""The cross-training commands of ``python -m studio``: split, pairs, manifest, train, gpus."""
from __future__ import annotations

import argparse
import sys

from ..runs.stages import ManifestSettings, PairsSettings, SplitSettings
from .common import open_workspace, print_result, report_run, run_stage


def cmd_split(args) -> int:
    run_id, result = run_stage(args, open_workspace(args), SplitSettings.from_args(args))
    if result and not args.json:
        rows = "\n".join(f"{r['split']:<11} {r['persons']:>7} {r['images']:>7} {r['kept']:>7}" for r in result["splits"])
        print(f"{'split':<11} {'persons':>7} {'images':>7} {'kept':>7}\n{rows}")
        return 0
    return report_run(run_id, result, args.json)


def cmd_pairs(args) -> int:
    run_id, result = run_stage(args, open_workspace(args), PairsSettings.from_args(args))
    if result:
        print(f"{result['pairs']} pairs over {result['persons_paired']} persons; "
              f"{result['excluded_near_duplicates']} near-duplicate pairs excluded {result['excluded_by']}; "
              f"{len(result['left_out_persons'])} persons left out", file=sys.stderr)
    return report_run(run_id, result, args.json)


def cmd_manifest(args) -> int:
    run_id, result = run_stage(args, open_workspace(args), ManifestSettings.from_args(args))
    return report_run(run_id, result, args.json)


def cmd_train(args) -> int:
    from ..train.launch import TrainConfig

    run_id, result = run_stage(args, open_workspace(args), TrainConfig.from_args(args))
    return report_run(run_id, result, args.json)


def cmd_gpus(args) -> int:
    from ..train.launch import gpus

    found = gpus()
    print_result(found, args.json, "\n".join(f"{g['index']}: {g['name']} ({g['memory_gb']:.1f} GB)" for g in found)
           or "No CUDA GPU found: training runs on the CPU (tiny models only) or on a machine with GPUs.")
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    from ..train.pairs import DEFAULT_TEMPLATE, STRATEGIES
    from ..train.launch import add_train_arguments

    p = sub.add_parser("split", parents=[common], help="assign persons (never single images) to train/validation/test")
    p.add_argument("--shares", default="0.8,0.1,0.1", help="train,validation,test shares of persons (default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--person", action="append", metavar="NAME=SPLIT", help="place a person by hand (repeatable)")
    p.add_argument("--reassign", action="store_true",
                   help="split every person again (drops the pairs); by default earlier assignments stay")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("pairs", parents=[common], help="cross-training pairs: target i with the face of another photo j")
    p.add_argument("--split", choices=["train", "validation"], default="train")
    p.add_argument("--strategy", choices=list(STRATEGIES), default="random",
                   help="; ".join(f"{k}: {v}" for k, v in STRATEGIES.items()))
    p.add_argument("--per-image", type=int, default=1, help="faces j per target image i (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-hash-distance", type=int, default=6,
                   help="perceptual-hash bits within which two photos are the same photo (default 6 of 64)")
    p.add_argument("--max-face-cos", type=float, default=0.95,
                   help="face cosine at or above which two photos are the same photo (default 0.95)")
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("manifest", parents=[common], help="write a split's pairs as CrossFaceID/InstantID training JSONL")
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=["train", "validation"], default="train")
    p.add_argument("--captions", choices=["approved", "unflagged", "any"], default="approved")
    p.add_argument("--missing-caption", choices=["skip", "template", "error"], default="skip",
                   help="a target without such a caption: leave the pair out (default), use --template, or fail")
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"caption used with --missing-caption template "
                                                                f"(default {DEFAULT_TEMPLATE!r})")
    p.add_argument("--allow-other-pack", action="store_true",
                   help="use embeddings of a face pack other than antelopev2 (the released models' pack)")
    p.add_argument("--candidates", action="store_true",
                   help="one line per target listing every paired face (face_candidates); training draws one per epoch")
    p.add_argument("--paths", choices=["relative", "absolute"], default="relative",
                   help="image and embedding paths relative to the manifest's folder (the official trainer's "
                        "--data_root_path) or absolute; the folder's README.md gives the official command")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("train", parents=[common], help="fine-tune InstantID on a manifest with `accelerate launch`")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("gpus", parents=[common], help="the CUDA GPUs training can use")
    p.set_defaults(func=cmd_gpus)
