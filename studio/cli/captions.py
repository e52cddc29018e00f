"""``python -m studio``: caption, tag, review: captions with GPT-4o (or any OpenAI-compatible server) and their review."""
from __future__ import annotations

import argparse
import json

from ..runs.stages import CaptionRunSettings, TagSettings
from .common import author, open_workspace, print_result, report_run, run_stage


def cmd_caption(args) -> int:
    run_id, result = run_stage(args, open_workspace(args), CaptionRunSettings.from_args(args))
    code = report_run(run_id, result, args.json)
    return code if code or result is None else (0 if result["failed"] == 0 else 1)


def cmd_tag(args) -> int:
    run_id, result = run_stage(args, open_workspace(args), TagSettings.from_args(args))
    return report_run(run_id, result, args.json)


def cmd_review(args) -> int:
    from ..captions import review

    ws = open_workspace(args)
    if args.approve_unflagged:
        print(json.dumps({"approved": review.bulk_approve_unflagged(ws, author(args))}))
        return 0
    if args.regenerate is not None:
        import os

        from ..captions.captioner import regenerate

        cur = regenerate(ws, args.regenerate, CaptionRunSettings.from_args(args).client_settings(), os.environ.get("OPENAI_API_KEY"), author(args))
        print_result(cur, args.json, f"image {args.regenerate}: version {cur['version']} generated: {cur['text']}")
        return 0
    actions = [a for a in ("approve", "reject", "edit") if getattr(args, a) is not None]
    if actions:
        if len(actions) > 1 or args.version is None:
            raise ValueError("give one of --approve/--reject/--edit IMAGE_ID with --version N (the version you reviewed)")
        action = actions[0]
        image_id = getattr(args, action)
        if action == "edit":
            cur = review.edit(ws, image_id, args.version, args.text or "", author(args))
        else:
            cur = getattr(review, action)(ws, image_id, args.version, author(args))
        print_result(cur, args.json, f"image {image_id}: version {cur['version']} {cur['status']} by {cur['author']}")
        return 0
    rows, total = ws.store.caption_queue(status=args.status, flag=args.flag, person=args.person, limit=args.limit)
    text = "\n".join(f"{r['image_id']:>6} v{r['version']} {r['status']:<9} {','.join(r['flags']) or '-':<12} {r['text']}"
                     for r in rows)
    print_result({"total": total, "captions": rows}, args.json, text + f"\n({total} in queue)")
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("caption", parents=[common], help="caption kept images with GPT-4o (key from OPENAI_API_KEY)")
    p.add_argument("--model", default=None, help="model name (default gpt-4o, the paper's)")
    p.add_argument("--base-url", default=None, help="any OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (vLLM, Ollama)")
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight (default 8)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per request (default 60)")
    p.add_argument("--max-retries", type=int, default=None, help="client retries on 429/5xx/timeouts (default 5)")
    p.add_argument("--price-input", type=float, default=None, help="USD per million input tokens for the estimate (default 2.50)")
    p.add_argument("--price-output", type=float, default=None, help="USD per million output tokens (default 10.00)")
    p.add_argument("--all", action="store_true", help="caption every image, not only those that passed curation")
    p.add_argument("--overwrite-reviewed", action="store_true",
                   help="make new captions current even over captions a person approved or edited")
    p.add_argument("--batch", action="store_true",
                   help="use the OpenAI Batch API (half price, answers within 24 h; a rerun resumes the same batch)")
    p.add_argument("--poll-seconds", type=float, default=30.0, help="--batch: seconds between status checks")
    p.add_argument("--no-retry", action="store_true",
                   help="--batch: report lines the batch could not answer instead of asking for them synchronously")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("tag", parents=[common], help="attribute tags from current captions (configurable vocabulary)")
    p.add_argument("--vocabulary", default=None, help="JSON file {tag: [phrases]} to use from now on")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("review", parents=[common], help="list the caption review queue, or bulk-approve unflagged captions")
    p.add_argument("--status", default=None, choices=["imported", "generated", "edited", "approved", "rejected"])
    p.add_argument("--flag", default=None, help="any | none | empty | refusal | structured | too_long")
    p.add_argument("--person", default=None, help="only this person")
    p.add_argument("--limit", type=int, default=50, help="rows to list")
    p.add_argument("--approve-unflagged", action="store_true", help="approve every unflagged current caption")
    p.add_argument("--approve", type=int, metavar="IMAGE_ID", default=None, help="approve this image's caption")
    p.add_argument("--reject", type=int, metavar="IMAGE_ID", default=None, help="reject this image's caption")
    p.add_argument("--edit", type=int, metavar="IMAGE_ID", default=None, help="replace this image's caption with --text")
    p.add_argument("--text", default=None, help="the edited caption (with --edit)")
    p.add_argument("--regenerate", type=int, metavar="IMAGE_ID", default=None,
                   help="ask the model again for this image (key from OPENAI_API_KEY) and make it current")
    for flag, kw in (("--model", {}), ("--base-url", {}), ("--concurrency", {"type": int}), ("--timeout", {"type": float}),
                     ("--max-retries", {"type": int}), ("--price-input", {"type": float}),
                     ("--price-output", {"type": float})):
        p.add_argument(flag, default=None, help=argparse.SUPPRESS if flag not in ("--model", "--base-url") else
                       "for --regenerate: as for `caption`", **kw)
    p.add_argument("--version", type=int, default=None,
                   help="the caption version you reviewed (as listed); refused if another is current now")
    p.set_defaults(func=cmd_review)
