"""Launch CrossFaceID Studio: `python app.py` opens the bundled demo workspace.

The demo workspace (the default path, or any with ``--demo``) is filled on first launch from the
public-domain photos in assets/demo (ingest, face analysis with the best face pack on this
machine, curation). A workspace of your own (``--workspace DIR``) opens as it is, empty when new:
its first photos are yours. An existing workspace opens without loading any model.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from studio.config import default_workspace, face_pack_spec

    on_space = bool(os.environ.get("SPACE_ID"))
    parser = argparse.ArgumentParser(description="CrossFaceID Studio")
    parser.add_argument("--workspace", type=Path, default=default_workspace(),
                        help="workspace directory (default: the demo workspace); a new one starts empty")
    parser.add_argument("--demo", action="store_true",
                        help="fill an empty --workspace with the demo photos (the default workspace always is)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_space else "127.0.0.1"),
                        help="address to listen on (default 127.0.0.1; other addresses need --auth)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), help="port to listen on")
    parser.add_argument("--auth", type=Path, default=os.environ.get("STUDIO_USERS_FILE") or None,
                        help="users file (JSON, hashed passwords) made with `python -m studio users add`")
    parser.add_argument("--face-pack", default=face_pack_spec(),
                        help="face models for building the demo: auto | antelopev2 | bundled | DIR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from studio.auth import policy_from
    from studio.config import default_workspace
    from studio.workspace import Workspace
    from studio.dataset.faces import MissingModelError, resolve_pack
    from studio.dataset.pipeline import ensure_demo_workspace
    from studio.ui.access import StudioContext
    from studio.ui.app import cache_policy, launch, max_upload_bytes

    try:
        max_upload_bytes(), cache_policy()  # a bad STUDIO_MAX_UPLOAD_MB or STUDIO_CACHE_MAX_AGE_H stops here
        policy = policy_from(args.auth, args.host, on_space=bool(os.environ.get("SPACE_ID")),
                             hf_admins=os.environ.get("STUDIO_ADMINS", ""))
        if args.demo or args.workspace.resolve() == default_workspace().resolve():
            ws = ensure_demo_workspace(args.workspace, args.face_pack,
                                       say=lambda line: print(line, file=sys.stderr, flush=True))
        else:
            ws = Workspace.open(args.workspace)
        note = resolve_pack(args.face_pack).note
    except (ValueError, MissingModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from studio.runs.jobs import reap

    reap(ws)  # runs whose worker died while the app was down are marked failed (rerun resumes them)
    ws.store.browse_columns()  # millions of images: Browse's in-memory columns start building in the background
    ctx = StudioContext(ws=ws, policy=policy, note=note, face_pack=args.face_pack)
    counts = ws.store.counts()
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    print(f"CrossFaceID Studio\n  workspace: {ws.root} ({counts['images']} images, {counts['persons']} persons)\n"
          f"  face pack: {note or args.face_pack}\n  access: {policy.describe()}\n"
          f"  open: http://{shown}:{args.port}/", flush=True)
    launch(ctx, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
