"""The evaluation commands of ``python -m studio``: testset, evaluate, report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import open_workspace, print_result, report_run, run_stage


def cmd_testset(args) -> int:
    from ..runs.stages import TestsetSettings
    from ..evaluation.testsets import item_rows, summary

    ws = open_workspace(args)
    if args.action == "list":
        rows = [summary(ws, t["name"]) for t in ws.store.testsets()]
        print_result(rows, args.json, "\n".join(f"{r['name']:<24} {r['kind']:<14} {r['items']:>5} items  {r['persons']:>4} persons"
                                          f"  pack {r['pack']}  from {r['source']}  fills {r['fills']}" for r in rows) or "No test sets yet.")
        return 0
    if args.action in ("show", "delete"):
        if not args.name:
            raise ValueError(f"testset {args.action} needs --name")
        if args.action == "delete":
            if not ws.store.delete_testset(args.name):
                raise ValueError(f"no test set named {args.name!r}")
            print(f"deleted test set {args.name!r}", file=sys.stderr)
            return 0
        data = {**summary(ws, args.name), "rows": item_rows(ws, args.name)}
        print_result(data, args.json, "\n".join(f"{r['idx']:>4}  {r['person'] or '':<16} {r['attribute'] or '':<13} {r['prompt']}"
                                          for r in data["rows"]))
        return 0
    if not args.name or (args.action == "build" and not args.kind):
        raise ValueError("testset build needs --name and --kind" if args.action == "build" else "testset import needs --name")
    run_id, result = run_stage(args, ws, TestsetSettings.from_args(args))
    return report_run(run_id, result, args.json)


def cmd_evaluate(args) -> int:
    from ..evaluation.evaluate import EvalConfig, table_markdown

    run_id, result = run_stage(args, open_workspace(args), EvalConfig.from_args(args))
    if result and not args.json:
        print(table_markdown(result["table"], result["baseline"]))
        print(f"{result['generated']} samples generated, {result['reused']} reused; {result['scored']} scored, "
              f"{result['scores_reused']} scores reused; files: {', '.join(result['files'].values())}", file=sys.stderr)
        return 0
    return report_run(run_id, result, args.json)


def cmd_report(args) -> int:
    from ..evaluation.report import write_report

    out = write_report(open_workspace(args), args.out, args.run)
    print(out.read_text(encoding="utf-8") if not args.quiet else out)
    print(f"written to {out}", file=sys.stderr)
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    from ..evaluation.metrics import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, SCORED_ATTRIBUTES
    from ..evaluation.testsets import KINDS, NEUTRAL_PROMPT

    p = sub.add_parser("testset", parents=[common], help="evaluation test sets: build from a split, import, list, show")
    p.add_argument("action", choices=["build", "import", "list", "show", "delete"])
    p.add_argument("--name")
    p.add_argument("--kind", choices=["", *KINDS], default="",
                   help="customization (Table 2 as CrossFaceID-test): a prompt asking for an attribute (+ a real photo "
                        "showing it); fidelity (as Unsplash-50): the face comes from the photo itself. Import: "
                        "inferred when left out (customization when the items have target photos)")
    p.add_argument("--split", default="test", help="build from this split's persons (default test)")
    p.add_argument("--person", action="append", help="build from these persons instead of a split (repeatable)")
    p.add_argument("--ask", default="", help=f"comma-separated attributes to ask of every input face; scored: "
                                             f"{', '.join(SCORED_ATTRIBUTES)}")
    p.add_argument("--prompt", default=NEUTRAL_PROMPT, help=f"prompt (fidelity) or its start (default {NEUTRAL_PROMPT!r})")
    p.add_argument("--per-person", type=int, default=0, help="at most this many items per person (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--file", help="import: CSV or JSONL with input, prompt[, attribute, target, person]; a folder of "
                                  "text-image pairs (photo + .txt prompt [+ .input photo]); or a zip of either")
    p.add_argument("--face-pack", default="auto", help="import: face pack for the photos (default auto)")
    p.add_argument("--replace", action="store_true", help="replace a test set of the same name")
    p.set_defaults(func=cmd_testset)

    p = sub.add_parser("evaluate", parents=[common], help="generate and score models x test sets x λ (Table 2)")
    p.add_argument("--testset", action="append", help="test set name (repeatable)")
    p.add_argument("--model", action="append", help="registered model name (repeatable)")
    p.add_argument("--lambdas", default="0.8", help="comma-separated λ values (default 0.8)")
    p.add_argument("--baseline", default=None, help="model the others are compared with (default: the first)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--identitynet-scale", type=float, default=0.8)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0, help="item i is generated with seed + i, for every model and λ")
    p.add_argument("--negative-prompt", default=None,
                   help="negative prompt of every sample (default: the official demo's, as in Generate; '' for none)")
    p.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL,
                   help="open_clip model name, hf-hub:REPO, or a folder with open_clip_config.json and weights")
    p.add_argument("--clip-pretrained", default=DEFAULT_CLIP_PRETRAINED,
                   help="pretrained tag or weights file for a built-in model name (default openai)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--allow-pack-mismatch", action="store_true",
                   help="evaluate a model with faces from a pack other than the one it was trained on (recorded)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="score in this process (default) or on a Ray actor pool (Ray starts locally unless --address)")
    p.add_argument("--address", default=None, help="--engine ray: the cluster to join, e.g. auto or ray://HEAD:10001")
    p.add_argument("--workers", type=int, default=None, help="--engine ray: scoring actors (default: one per CPU)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="--engine ray: GPU share per actor, e.g. 0.25")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", parents=[common], help="the paper's Tables 1-3 for this workspace, as Markdown")
    p.add_argument("--out", type=Path, default=None, help="file to write (default <workspace>/exports/report.md)")
    p.add_argument("--run", type=int, default=None, help="evaluation run for Table 2 (default: the latest finished)")
    p.add_argument("--quiet", action="store_true", help="print only the path")
    p.set_defaults(func=cmd_report)
