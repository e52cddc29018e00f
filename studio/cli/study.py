"""``python -m studio study ...``: human-evaluation studies from the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import author, open_workspace, print_result, report_run, run_stage


def cmd_study(args) -> int:
    from ..human import studies as he
    from ..codes import StudyStatus

    ws = open_workspace(args)
    if args.action == "list":
        rows = ws.store.studies()
        print_result(rows, args.json, "\n".join(f"{s['name']:<24} {s['status']:<7} {s['items']:>5} items  {s['annotators']:>3} "
                                          f"annotators  {s['done']}/{s['assigned']} done" for s in rows) or "No studies yet.")
        return 0
    if not args.name:
        raise ValueError(f"study {args.action} needs --name")
    if args.action == "generate":
        from ..human.design import StudySettings

        run_id, result = run_stage(args, ws, StudySettings.from_args(args))
        return report_run(run_id, result, args.json)
    if args.action == "create":
        sources = [x for x in (args.eval_run is not None, bool(args.generations), bool(args.batch), args.file is not None,
                               args.all_generations) if x]
        if len(sources) != 1:
            raise ValueError("give one source: --eval-run N, --generations IDS, --batch B, --all-generations or --file F")
        if args.file is not None:
            samples, source = he.samples_from_file(ws, args.file, args.name), f"file:{args.file.name}"
        else:
            ids = [int(x) for x in args.generations.split(",") if x.strip()] if args.generations else None
            samples = he.samples_from_generations(ws, ids, args.batch, args.eval_run)
            source = (f"evaluation run {args.eval_run}" if args.eval_run is not None else
                      f"generations {args.generations}" if ids else f"batch {args.batch}" if args.batch else "all generations")
        annotators = [a for a in (args.annotators or "").split(",") if a.strip()]
        result = he.create_study(ws, args.name, samples, annotators, per_item=args.per_item or 0,
                                 duplicates=args.duplicates or 0, seed=args.seed or 0, instructions=args.instructions or he.DEFAULT_INSTRUCTIONS, source=source,
                                 created_by=author(args))
        print_result(result, args.json)
        return 0
    if args.action in ("open", "close"):
        s = he.set_status(ws, args.name, StudyStatus.OPEN if args.action == "open" else StudyStatus.CLOSED)
        print(f"study {s['name']!r} is {s['status']}", file=sys.stderr)
        return 0
    if args.action == "results":
        res = he.results(ws, args.name)
        print_result(res, args.json, he.table3_markdown(res))
        return 0
    if args.action == "export":
        print_result(he.export(ws, args.name, args.out), args.json)
        return 0
    if args.action in ("export-labelstudio", "import-labelstudio"):
        from ..human import labelstudio as ls

        emails = ls.read_emails(args.emails)
        if args.action == "export-labelstudio":
            out = args.out or ws.root / "exports" / "labelstudio" / args.name
            result = ls.export_labelstudio(ws, args.name, out, images=args.images, document_root=args.document_root,
                                           emails=emails, domain=args.email_domain)
            print("Label Studio needs a user for each of: " + ", ".join(result["users_needed"] or ["(no scores yet)"]),
                  file=sys.stderr)
        else:
            if args.file is None:
                raise ValueError("import-labelstudio needs --file (Label Studio's JSON export)")
            result = ls.import_labelstudio(ws, args.name, args.file, users=args.users, emails=emails,
                                           domain=args.email_domain, replace=args.replace, from_study=args.from_study)
            for problem in result["problems"][:20]:
                print(f"warning: {problem}", file=sys.stderr)
            if result["problems"] and not (result["scores_added"] or result["scores_same"] or result["comments"]):
                print(f"error: nothing was imported: {len(result['problems'])} problem(s)", file=sys.stderr)
                return 1
        print_result(result, args.json)
        return 0
    s = he.get_study(ws, args.name)
    print_result(s, args.json)
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("study", parents=[common],
                       help="human-evaluation studies: create (from samples), generate (faces x prompts x models), "
                            "open, close, results, export")
    p.add_argument("action", choices=["create", "generate", "open", "close", "list", "show", "results", "export",
                                       "export-labelstudio", "import-labelstudio"])
    p.add_argument("--name")
    p.add_argument("--eval-run", type=int, default=None, help="create: the samples of an evaluation run")
    p.add_argument("--generations", default="", help="create: comma-separated generated-sample ids")
    p.add_argument("--batch", default="", help="create: one generation batch")
    p.add_argument("--all-generations", action="store_true", help="create: every generated sample")
    p.add_argument("--file", type=Path, default=None, help="create: JSONL of image, face, prompt, model")
    p.add_argument("--annotators", default="", help="create / generate: comma-separated user names (users file or HF users)")
    p.add_argument("--per-item", type=int, default=None,
                   help="annotators per item (default 0: every annotator scores every item, as in the paper)")
    p.add_argument("--duplicates", type=int, default=None, help="items shown twice, for self-consistency (default 0)")
    p.add_argument("--seed", type=int, default=None, help="assignment order, and generate: seed + item index")
    p.add_argument("--instructions", default=None)
    g = p.add_argument_group("generate: faces x prompts x models, generated as a run (no CLIP needed)")
    g.add_argument("--faces", default=None, help="a test set (its input faces), or a folder / zip of face photos")
    g.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    g.add_argument("--prompts-file", type=Path, default=None,
                   help="one prompt per line (# comments); assets/prompts/human_study.txt is an example")
    g.add_argument("--model", action="append", help="a registered model (repeatable)")
    g.add_argument("--lambda", dest="lambda_", type=float, default=None, help="λ, the ID weight (default 0.8)")
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--identitynet-scale", type=float, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--negative-prompt", default=None, help="default: the official demo's, as in Generate")
    g.add_argument("--face-pack", default=None, help="for a folder / zip of faces (default auto)")
    g.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None, help="export: folder (default <workspace>/exports/studies/...)")
    g = p.add_argument_group("Label Studio: export-labelstudio (config + tasks), import-labelstudio --file EXPORT.json")
    g.add_argument("--images", choices=["data", "local-files"], default="data",
                   help="data: photos embedded as data URLs (small studies); local-files: /data/local-files/?d=PATH "
                        "under --document-root (Label Studio's LOCAL_FILES_DOCUMENT_ROOT)")
    g.add_argument("--document-root", type=Path, default=None, help="local-files: the root (default: the workspace)")
    g.add_argument("--emails", type=Path, default=None,
                   help="annotator name -> Label Studio email (JSON object or name,email CSV); "
                        "default NAME@--email-domain")
    g.add_argument("--email-domain", default="studio.local")
    g.add_argument("--users", type=Path, default=None,
                   help="import: Label Studio's user list (GET /api/users), to read the export's user ids")
    g.add_argument("--replace", action="store_true", help="import: take Label Studio's score where the studio has another")
    g.add_argument("--from-study", default=None,
                   help="import: the tasks were exported from this study (same items), e.g. into a copy")
    p.set_defaults(func=cmd_study)
