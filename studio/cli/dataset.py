"""``python -m studio``: ingest, analyze, curate, stats, list, show, problems, export, demo: the dataset phase."""
from __future__ import annotations

import argparse
import json
import sys

from ..config import face_pack_spec
from ..runs.stages import AnalyzeSettings, CurateSettings, ExportSettings, IngestSettings
from .common import open_workspace, print_result, report_run, run_stage


def cmd_ingest(args) -> int:
    run_id, result = run_stage(args, open_workspace(args), IngestSettings.from_args(args))
    code = report_run(run_id, result, args.json)
    if code == 0 and result["added"] == 0 and result["rejected"]:
        reasons = ", ".join(f"{k} {v}" for k, v in result["rejected_by_reason"].items())
        print(f"error: nothing was added: {result['rejected']} input(s) rejected ({reasons}); "
              f"see `python -m studio problems`", file=sys.stderr)
        return 1
    return code


def cmd_analyze(args) -> int:
    run_id, result = run_stage(args, open_workspace(args), AnalyzeSettings.from_args(args))
    return report_run(run_id, result, args.json)


def cmd_curate(args) -> int:
    run_id, result = run_stage(args, open_workspace(args), CurateSettings.from_args(args))
    return report_run(run_id, result, args.json)


def _warn_stale(ws) -> None:
    from ..dataset.stats import stale_message

    msg = stale_message(ws.store.stale_verdicts())
    if msg:
        print(f"warning: {msg}", file=sys.stderr)


def cmd_stats(args) -> int:
    from ..dataset.stats import dataset_stats, format_table1

    ws = open_workspace(args)
    _warn_stale(ws)
    stats = dataset_stats(ws)
    text = format_table1(stats) + "\n\nrejections by reason: " + json.dumps(stats["rejections_by_reason"]) + \
        "\ningest problems by reason: " + json.dumps(stats["ingest_problems_by_reason"])
    print_result(stats, args.json, text)
    return 0


def cmd_list(args) -> int:
    from ..dataset.stats import image_list

    from ..dataset.browse import BrowseFilter, browse

    ws = open_workspace(args)
    _warn_stale(ws)
    rows = image_list(ws)
    if args.person:
        rows = [r for r in rows if r["person"] == args.person]
    if args.status:
        rows = [r for r in rows if r["status"] == args.status]
    browse_filters = (args.reason, args.pose, args.tag, args.caption_status, args.caption_text, args.outlier)
    if any(v not in (None, []) for v in browse_filters):  # the Browse tab's filters, same code
        f = BrowseFilter(reason=args.reason, pose=args.pose, tags=args.tag or [], caption_status=args.caption_status,
                         caption_text=args.caption_text or "", outlier=args.outlier or "any")
        keep, page = set(), 1
        while True:
            result = browse(ws, f, page=page, page_size=200)
            keep |= {r["image_id"] for r in result.items}
            if page >= result.pages:
                break
            page += 1
        rows = [r for r in rows if r["id"] in keep]
    text = "\n".join(
        f"{r['id']:>6}  {r['person']:<20} {r['status']:<7} faces={r['face_count']} ratio={r['face_ratio']} "
        f"pose={r['pose']} outlier={r['outlier']} {','.join(r['reasons'])}{' (stale verdict)' if r['verdict_stale'] else ''}"
        for r in rows
    )
    print_result(rows, args.json, text)
    return 0


def cmd_show(args) -> int:
    from ..dataset.browse import image_detail

    d = image_detail(open_workspace(args), args.image_id)
    out = {**d["metadata"], "problem": d["problem"], "same_person": [o["image_id"] for o in d["same_person"]]}
    print_result(out, args.json)
    return 0


def cmd_problems(args) -> int:
    rows = open_workspace(args).store.ingest_problems()
    text = "\n".join(f"{r['code']:<22} {r['source']}  {r['detail'] or ''}" for r in rows)
    print_result(rows, args.json, text or "No ingest problems: every input was ingested.")
    return 0


def cmd_export(args) -> int:
    run_id, result = run_stage(args, open_workspace(args), ExportSettings.from_args(args))
    return report_run(run_id, result, args.json)


def cmd_demo(args) -> int:
    from ..dataset.pipeline import ensure_demo_workspace
    from ..dataset.stats import dataset_stats, format_table1

    ws = ensure_demo_workspace(args.workspace, args.face_pack)
    print(format_table1(dataset_stats(ws)))
    return 0


def add_commands(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ingest", parents=[common],
                       help="add photos: person folders, CrossFaceID JSONL, a CSV/parquet table, or webdataset shards")
    p.add_argument("source", help="a folder of person folders, a .jsonl (or folder of them), a .csv or "
                                             ".parquet, a webdataset .tar or a folder of shards (img2dataset output)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: min(4, cores))")
    p.add_argument("--file-column", default=None, help="table column with file names (default: detected)")
    p.add_argument("--person-column", default=None,
                   help="table column (or shard metadata field) with the person (default: detected)")
    p.add_argument("--person-pattern", default=None,
                   help="shards and JSONL: regex on the sample key (shards) or the image path (JSONL) whose group "
                        "'person' (or group 1) is the person (default: a person field, else the folder name)")
    p.add_argument("--data-root", default=None,
                   help="JSONL: the folder its relative image paths start from (the official trainer's "
                        "--data_root_path; default: the JSONL's folder)")
    p.add_argument("--caption-column", default=None, help="table column with captions (default: detected)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("analyze", parents=[common], help="detect faces, keypoints, embeddings and pose")
    p.add_argument("--face-pack", default=face_pack_spec(),
                   help="auto | antelopev2 | bundled | a folder with SCRFD + ArcFace .onnx (default: $STUDIO_FACE_PACK or auto)")
    p.add_argument("--redo", action="store_true", help="re-analyze images already analyzed by this pack")
    p.add_argument("--curate", action=argparse.BooleanOptionalAction, default=True,
                   help="re-curate with the last rules when analyses changed (default on)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker threads (default: one per core on CPU, 1 on GPU); with --engine ray: actors")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local threads (default) or a Ray actor pool (Ray starts locally unless --address)")
    p.add_argument("--address", default=None, help="--engine ray: the cluster to join, e.g. auto or ray://HEAD:10001")
    p.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="--engine ray: GPU share per actor (with onnxruntime-gpu), e.g. 0.25")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("curate", parents=[common], help="apply the paper's rules and the identity check (no re-analysis)")
    p.add_argument("--min-faces", type=int, default=None, help="fewest faces allowed (paper: 1)")
    p.add_argument("--max-faces", type=int, default=None, help="most faces allowed (paper: 3)")
    p.add_argument("--min-side", type=int, default=None, help="shortest side in pixels (paper: 512)")
    p.add_argument("--min-face-ratio", type=float, default=None, help="largest face area / image area (paper: 0.04)")
    p.add_argument("--identity-threshold", type=float, default=None,
                   help="cosine to the person's centroid below which an image is a likely mislabel (default 0.3)")
    p.add_argument("--min-person-images", type=int, default=None, help="photos a person needs before outliers are judged (default 3)")
    p.add_argument("--reject-outliers", action=argparse.BooleanOptionalAction, default=None,
                   help="fail identity outliers (default) or only flag them")
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser("stats", parents=[common], help="Table 1 before/after curation and rejection counts")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("list", parents=[common], help="every image with status, reasons, faces, pose, outlier flag")
    p.add_argument("--person", default=None, help="only this person")
    p.add_argument("--status", choices=["pass", "fail", "pending"], default=None, help="only this status")
    p.add_argument("--reason", default=None, help="only images rejected for this reason")
    p.add_argument("--pose", default=None, help="only this pose (frontal, side, looking up, looking down)")
    p.add_argument("--tag", action="append", default=None, help="only images with this attribute tag (repeatable)")
    p.add_argument("--caption-status", default=None, help="none | imported | generated | edited | approved | rejected")
    p.add_argument("--caption-text", default=None, help="words the caption contains")
    p.add_argument("--outlier", choices=["yes", "no"], default=None, help="identity outliers only, or none")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", parents=[common], help="one image: faces, verdict, caption, provenance (Browse's detail)")
    p.add_argument("image_id", type=int, help="image id")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("problems", parents=[common], help="inputs rejected or skipped at ingest, with reasons")
    p.set_defaults(func=cmd_problems)

    p = sub.add_parser("export", parents=[common], help="write the CrossFaceID training JSONL + .npy embeddings")
    p.add_argument("--out", required=True, help="export directory")
    p.add_argument("--include-failed", action="store_true", help="also export images that failed curation")
    p.add_argument("--captions", choices=["approved", "unflagged", "any"], default="approved",
                   help="which captions count: approved/edited by a person (default), also unflagged machine ones, or any")
    p.add_argument("--missing-caption", choices=["keep", "skip", "error"], default="keep",
                   help="an image without such a caption: keep with an empty caption (warned), skip it, or fail")
    p.add_argument("--allow-other-pack", action="store_true",
                   help="export embeddings of a face pack other than antelopev2 (the released models' pack)")
    p.add_argument("--format", choices=["studio", "hf"], default="studio",
                   help="studio: the training JSONL + .npy embeddings; hf: a Hugging Face imagefolder dataset "
                        "(datasets.load_dataset('imagefolder', data_dir=OUT)) with a dataset card")
    p.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="with --format hf: upload to this dataset repository (private unless --public; needs a token)")
    p.add_argument("--public", action="store_true", help="make a pushed dataset repository public")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", parents=[common], help="build the bundled demo workspace from assets/demo")
    p.add_argument("--face-pack", default=face_pack_spec(), help="face pack (default: auto)")
    p.set_defaults(func=cmd_demo)
