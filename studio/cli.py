"""``python -m studio <stage>``: every stage of the chain, scriptable, on one workspace."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import default_workspace, face_pack_spec


def _progress():
    from tqdm.auto import tqdm

    return lambda it, **kw: tqdm(it, **kw)


def _print(data, as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        print(text if text is not None else json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _workspace(args):
    from .workspace import Workspace

    return Workspace.open(args.workspace)


def _author(args) -> str:
    import getpass

    if args.author:
        return args.author
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _as_run(args, ws, kind: str, body, settings: dict | None = None):
    """Execute a stage as a recorded run (attached to --run-id when the app started this worker).

    ``body(track, run_id)`` gets a progress wrapper (the run's, plus a tqdm bar for the log) and
    the run id (for provenance), and returns a dict. Returns (run id, result), None when cancelled.
    """
    from .runs import combine, execute

    settings = settings if settings is not None else {k: v for k, v in vars(args).items()
                                                     if k not in ("func", "workspace", "json", "verbose", "run_id")}
    return execute(ws, kind, settings, _author(args), lambda handle: body(combine(handle.track, _progress()), handle.run_id),
                   run_id=args.run_id, inputs={"workspace": str(ws.root)})


def _report_run(run_id: int, result, as_json: bool) -> int:
    if result is None:
        print(f"run {run_id} cancelled; run the same command again to resume", file=sys.stderr)
        return 130
    _print({**result, "run_id": run_id} if isinstance(result, dict) else result, as_json)
    return 0


def cmd_ingest(args) -> int:
    from .ingest import ingest

    ws = _workspace(args)
    run_id, result = _as_run(args, ws, "ingest", lambda track, run: ingest(
        ws, args.source, workers=args.workers, progress=track, file_column=args.file_column,
        person_column=args.person_column, caption_column=args.caption_column, person_pattern=args.person_pattern,
        run_id=run).as_dict())
    return _report_run(run_id, result, args.json)


def cmd_analyze(args) -> int:
    from .analyze import analyze

    from .curate import curate

    ws = _workspace(args)

    def body(track, run):
        report = analyze(ws, args.face_pack, redo=args.redo, workers=args.workers, progress=track, run_id=run,
                         engine=args.engine, address=args.address, gpus_per_worker=args.gpus_per_worker)
        if report.note:
            print(f"note: {report.note}", file=sys.stderr)
        result = report.as_dict()
        touched = report.analyzed + report.failed
        if touched and args.curate:  # verdicts depend on the analyses just written: bring them up to date
            result["curation"] = curate(ws, run_id=run).as_dict()
        elif touched:
            print("note: analyses changed; run `python -m studio curate` to update the verdicts", file=sys.stderr)
        return result

    run_id, result = _as_run(args, ws, "analyze", body)
    return _report_run(run_id, result, args.json)


def cmd_curate(args) -> int:
    from .curate import curate, curation_rules

    ws = _workspace(args)
    rules = curation_rules(
        ws, min_faces=args.min_faces, max_faces=args.max_faces, min_side=args.min_side,
        min_face_ratio=args.min_face_ratio, identity_threshold=args.identity_threshold,
        min_person_images=args.min_person_images, reject_outliers=args.reject_outliers,
    )
    run_id, result = _as_run(args, ws, "curate", lambda track, run: curate(ws, rules, run_id=run, track=track).as_dict(),
                             settings=rules.to_dict())
    return _report_run(run_id, result, args.json)


def _warn_stale(ws) -> None:
    from .stats import stale_message

    msg = stale_message(ws.store.stale_verdicts())
    if msg:
        print(f"warning: {msg}", file=sys.stderr)


def cmd_stats(args) -> int:
    from .stats import dataset_stats, format_table1

    ws = _workspace(args)
    _warn_stale(ws)
    stats = dataset_stats(ws)
    text = format_table1(stats) + "\n\nrejections by reason: " + json.dumps(stats["rejections_by_reason"]) + \
        "\ningest problems by reason: " + json.dumps(stats["ingest_problems_by_reason"])
    _print(stats, args.json, text)
    return 0


def cmd_list(args) -> int:
    from .stats import image_list

    from .browse import BrowseFilter, browse

    ws = _workspace(args)
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
    _print(rows, args.json, text)
    return 0


def cmd_show(args) -> int:
    from .browse import image_detail

    d = image_detail(_workspace(args), args.image_id)
    out = {**d["metadata"], "problem": d["problem"], "same_person": [o["image_id"] for o in d["same_person"]]}
    _print(out, args.json)
    return 0


def cmd_problems(args) -> int:
    rows = _workspace(args).store.ingest_problems()
    text = "\n".join(f"{r['code']:<22} {r['source']}  {r['detail'] or ''}" for r in rows)
    _print(rows, args.json, text or "No ingest problems: every input was ingested.")
    return 0


def cmd_export(args) -> int:
    from .export import export_training_set

    ws = _workspace(args)
    run_id, result = _as_run(args, ws, "export", lambda track, run: export_training_set(
        ws, args.out, include_failed=args.include_failed, captions=args.captions, missing_caption=args.missing_caption,
        allow_other_pack=args.allow_other_pack, run_id=run, author=_author(args), track=track))
    if result and result.get("warning"):
        print(f"warning: {result['warning']}", file=sys.stderr)
    return _report_run(run_id, result, args.json)


def cmd_models(args) -> int:
    from .faces import resolve_pack
    from .instantid import download_weights

    if args.download and args.download != "antelopev2":
        folders = download_weights(args.download)
        _print({"downloaded": args.download, "folders": folders}, args.json)
        return 0
    pack = resolve_pack(args.download or args.face_pack, download=bool(args.download))
    _print({"pack": pack.name, "detector": str(pack.detector), "recognizer": str(pack.recognizer), "note": pack.note}, args.json)
    return 0


def _caption_settings(args):
    from .captions import CaptionSettings

    kw = {k: v for k, v in {"model": args.model, "base_url": args.base_url, "concurrency": args.concurrency,
                            "timeout": args.timeout, "max_retries": args.max_retries,
                            "price_input_per_mtok": args.price_input, "price_output_per_mtok": args.price_output}.items()
          if v is not None}
    return CaptionSettings(**kw)


def cmd_caption(args) -> int:
    import os

    from .captions import caption_workspace

    ws = _workspace(args)
    settings = _caption_settings(args)
    key = os.environ.get("OPENAI_API_KEY")

    def work(track, run):
        if not args.batch:
            return caption_workspace(ws, settings, key, kept_only=not args.all, author=_author(args), progress=track,
                                     overwrite_reviewed=args.overwrite_reviewed, run_id=run).as_dict() | {"mode": "sync"}
        from .caption_batch import BATCH_DISCOUNT, batches, caption_batch

        report = caption_batch(ws, settings, key, kept_only=not args.all, author=_author(args), progress=track,
                               overwrite_reviewed=args.overwrite_reviewed, run_id=run, poll_seconds=args.poll_seconds,
                               retry_failed=not args.no_retry)
        return report.as_dict() | {"mode": f"batch (Batch API price: {BATCH_DISCOUNT:g} x the synchronous one)",
                                   "batches": [b["batch_id"] for b in batches(ws)]}

    run_id, result = _as_run(args, ws, "caption", work,
        settings={**settings.key_params(), "base_url": settings.base_url, "concurrency": settings.concurrency,
                  "all": args.all, "overwrite_reviewed": args.overwrite_reviewed, "batch": args.batch})
    code = _report_run(run_id, result, args.json)
    return code if code or result is None else (0 if result["failed"] == 0 else 1)


def cmd_tag(args) -> int:
    from .attributes import set_vocabulary, tag_workspace

    ws = _workspace(args)
    if args.vocabulary:
        try:
            vocab = json.loads(Path(args.vocabulary).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--vocabulary {args.vocabulary}: {exc}") from None
        set_vocabulary(ws, vocab)
    run_id, result = _as_run(args, ws, "tag", lambda track, run: {"tags": tag_workspace(ws)})
    return _report_run(run_id, result, args.json)


def cmd_review(args) -> int:
    from . import review

    ws = _workspace(args)
    if args.approve_unflagged:
        print(json.dumps({"approved": review.bulk_approve_unflagged(ws, _author(args))}))
        return 0
    if args.regenerate is not None:
        import os

        from .captions import regenerate

        cur = regenerate(ws, args.regenerate, _caption_settings(args), os.environ.get("OPENAI_API_KEY"), _author(args))
        _print(cur, args.json, f"image {args.regenerate}: version {cur['version']} generated: {cur['text']}")
        return 0
    actions = [a for a in ("approve", "reject", "edit") if getattr(args, a) is not None]
    if actions:
        if len(actions) > 1 or args.version is None:
            raise ValueError("give one of --approve/--reject/--edit IMAGE_ID with --version N (the version you reviewed)")
        action = actions[0]
        image_id = getattr(args, action)
        if action == "edit":
            cur = review.edit(ws, image_id, args.version, args.text or "", _author(args))
        else:
            cur = getattr(review, action)(ws, image_id, args.version, _author(args))
        _print(cur, args.json, f"image {image_id}: version {cur['version']} {cur['status']} by {cur['author']}")
        return 0
    rows, total = ws.store.caption_queue(status=args.status, flag=args.flag, person=args.person, limit=args.limit)
    text = "\n".join(f"{r['image_id']:>6} v{r['version']} {r['status']:<9} {','.join(r['flags']) or '-':<12} {r['text']}"
                     for r in rows)
    _print({"total": total, "captions": rows}, args.json, text + f"\n({total} in queue)")
    return 0


def cmd_register_model(args) -> int:
    from .generate import register_model
    from .instantid import ModelSpec, missing_weights

    spec = ModelSpec(args.name, base=args.base, identitynet=args.identitynet, ip_adapter=args.ip_adapter,
                     face_pack=args.trained_face_pack, lcm_lora=args.lcm_lora)
    register_model(_workspace(args), spec)
    _print({"registered": spec.to_dict(), "missing": missing_weights(spec)}, args.json)
    return 0


def cmd_generate(args) -> int:
    from .generate import generate_run
    from .images import load_rgb
    from .instantid import GenerationSettings, ModelCache

    from .instantid import DEMO_NEGATIVE_PROMPT, FAST_GUIDANCE, FAST_STEPS

    ws = _workspace(args)
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
    note, samples, run_id = generate_run(
        ws, ModelCache(args.device), args.model, settings, face_pack=args.face_pack,
        rgb=load_rgb(args.reference).rgb if args.reference is not None else None, image_id=args.image_id,
        face_index=args.face_index, pose_rgb=load_rgb(args.pose).rgb if args.pose is not None else None,
        pose_image_id=args.pose_image_id, sweep=args.sweep, allow_pack_mismatch=args.allow_pack_mismatch,
        author=_author(args))
    print(note, file=sys.stderr)
    _print([{"model": s.model, "lambda": s.ip_scale, "path": str(s.path), "id": s.generation_id, "run_id": run_id}
            for s in samples], args.json)
    return 0


def cmd_runs(args) -> int:
    from . import runs

    ws = _workspace(args)
    runs.reap(ws)
    if args.action == "list":
        rows = [runs.describe(r) for r in ws.store.runs(kind=args.kind, status=args.status, limit=args.limit)]
        _print(rows, args.json, "\n".join(
            f"{r['id']:>5}  {r['kind']:<8} {r['status']:<9} {r['progress']:<16} {r['author']:<12} {r['started']}"
            for r in rows) or "No runs yet.")
        return 0
    if args.id is None:
        raise ValueError(f"runs {args.action} needs a run id")
    r = ws.store.run(args.id)
    if r is None:
        raise ValueError(f"no run {args.id}")
    if args.action == "show":
        info = {**runs.describe(r), "settings": r["settings"], "inputs": r["inputs"], "log": r["log_path"]}
        _print(info, args.json, json.dumps(info, indent=2, default=str) + "\n\n" + runs.log_tail(ws, args.id))
        return 0
    if args.action == "cancel":
        ok = runs.cancel(ws, args.id)
        print(f"run {args.id}: " + ("asked to stop at its next item" if ok else f"already {r['status']}"))
        return 0 if ok else 1
    new = runs.rerun(ws, args.id, _author(args))
    print(f"run {new} started (resumes run {args.id}); follow it with `python -m studio runs show {new}`")
    return 0


def cmd_users(args) -> int:
    import getpass

    from .auth import UsersFile

    users = UsersFile(args.auth)
    if args.action == "list":
        rows = [{"user": name, "role": u["role"]} for name, u in sorted(users.load().items())]
        _print(rows, args.json, "\n".join(f"{r['user']}\t{r['role']}" for r in rows))
        return 0
    if not args.name:
        raise ValueError("users add needs a user name")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            raise ValueError("passwords differ")
    users.add(args.name, password, args.role)
    print(f"{args.name} ({args.role}) saved to {args.auth}")
    return 0


def cmd_demo(args) -> int:
    from .pipeline import ensure_demo_workspace
    from .stats import dataset_stats, format_table1

    ws = ensure_demo_workspace(args.workspace, args.face_pack)
    print(format_table1(dataset_stats(ws)))
    return 0


def _style_names() -> list[str]:
    from .instantid import STYLES

    return list(STYLES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description="CrossFaceID Studio: build and curate FaceID datasets.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", type=Path, default=default_workspace(),
                        help="workspace directory (default: $STUDIO_WORKSPACE or ./workspaces/demo)")
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    common.add_argument("--author", default=None, help="name recorded with what this command writes (default: $USER)")
    common.add_argument("--run-id", type=int, default=None, help=argparse.SUPPRESS)  # set by the app's worker
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", parents=[common],
                       help="add photos: person folders, CrossFaceID JSONL, a CSV/parquet table, or webdataset shards")
    p.add_argument("source", type=Path, help="a folder of person folders, a .jsonl (or folder of them), a .csv or "
                                             ".parquet, a webdataset .tar or a folder of shards (img2dataset output)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: min(4, cores))")
    p.add_argument("--file-column", default=None, help="table column with file names (default: detected)")
    p.add_argument("--person-column", default=None,
                   help="table column (or shard metadata field) with the person (default: detected)")
    p.add_argument("--person-pattern", default=None,
                   help="shards: regex on the sample key whose group 'person' (or group 1) is the person "
                        "(default: a person field of the .json, else the key's folder part)")
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
    p.add_argument("--out", type=Path, required=True, help="export directory")
    p.add_argument("--include-failed", action="store_true", help="also export images that failed curation")
    p.add_argument("--captions", choices=["approved", "unflagged", "any"], default="approved",
                   help="which captions count: approved/edited by a person (default), also unflagged machine ones, or any")
    p.add_argument("--missing-caption", choices=["keep", "skip", "error"], default="keep",
                   help="an image without such a caption: keep with an empty caption (warned), skip it, or fail")
    p.add_argument("--allow-other-pack", action="store_true",
                   help="export embeddings of a face pack other than antelopev2 (the released models' pack)")
    p.set_defaults(func=cmd_export)

    from .cli_eval import add_commands as add_eval_commands
    from .cli_study import add_commands as add_study_commands
    from .cli_train import add_commands

    add_commands(sub, common)
    add_eval_commands(sub, common)
    add_study_commands(sub, common)

    p = sub.add_parser("models", parents=[common], help="show the face pack in use, or download weights")
    p.add_argument("--face-pack", default=face_pack_spec(), help="pack to resolve (default: auto)")
    p.add_argument("--download", choices=["antelopev2", "sdxl", "instantid", "crossfaceid", "lcm-lora"], default=None,
                   help="download into the hub cache: the antelopev2 face pack, the SDXL base (fp16 files only), "
                        "InstantID or CrossFaceID (IdentityNet + adapter), or SDXL's LCM-LoRA (fast mode)")
    p.set_defaults(func=cmd_models)

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

    p = sub.add_parser("register-model", parents=[common], help="add an InstantID model (hub ids or local paths) for generation")
    p.add_argument("name", help="name shown in the Generate tab")
    p.add_argument("--base", default="stabilityai/stable-diffusion-xl-base-1.0", help="SDXL base: hub id or diffusers folder")
    p.add_argument("--identitynet", required=True, help="hub id or folder holding ControlNetModel/ (or the ControlNetModel folder)")
    p.add_argument("--ip-adapter", required=True,
                   help="hub id or folder holding ip-adapter.bin or pytorch_model.bin (or the file)")
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

    p = sub.add_parser("runs", parents=[common], help="long stages: list, show (with log), cancel, rerun (resume)")
    p.add_argument("action", choices=["list", "show", "cancel", "rerun"], help="what to do")
    p.add_argument("id", type=int, nargs="?", help="run id (show, cancel, rerun)")
    p.add_argument("--kind", default=None, help="only runs of this kind (list)")
    p.add_argument("--status", default=None, choices=["queued", "running", "done", "failed", "cancelled"])
    p.add_argument("--limit", type=int, default=50, help="rows to list")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("users", help="manage the accounts of a users file (passwords stored as scrypt hashes)")
    p.add_argument("action", choices=["add", "list"], help="add (or update) a user, or list users")
    p.add_argument("name", nargs="?", help="user name (for add)")
    p.add_argument("--role", choices=["admin", "annotator"], default="annotator", help="role of the user (default annotator)")
    p.add_argument("--auth", type=Path, required=True, help="users file to edit (pass the same to app.py --auth)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input, not a prompt")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("demo", parents=[common], help="build the bundled demo workspace from assets/demo")
    p.add_argument("--face-pack", default=face_pack_spec(), help="face pack (default: auto)")
    p.set_defaults(func=cmd_demo)
    parser.stage_parsers = sub.choices  # type: ignore[attr-defined]  # for stage_parser()
    return parser


def stage_parser(kind: str) -> argparse.ArgumentParser:
    """A fresh parser of one stage, exactly as ``python -m studio <kind>`` parses (checks a worker's arguments)."""
    parsers = build_parser().stage_parsers  # type: ignore[attr-defined]
    if kind not in parsers:
        raise ValueError(f"unknown stage {kind!r}")
    return parsers[kind]


def main(argv: list[str] | None = None) -> int:
    from .faces import MissingModelError
    from .instantid import MissingWeightsError
    from .training import TrainingError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (MissingModelError, MissingWeightsError, TrainingError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
