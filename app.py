"""Launch CrossFaceID Studio: `python app.py` opens the bundled demo workspace.

An empty or new workspace is filled on first launch from the public-domain photos in
assets/demo (ingest, face analysis with the best face pack on this machine, curation); an
existing workspace opens without loading any model.
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
                        help="workspace directory; an empty or new one is filled with the demo photos")
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
    from studio.config import ASSETS_DIR
    from studio.faces import MissingModelError, resolve_pack
    from studio.pipeline import ensure_demo_workspace
    from studio.ui import annotate
    from studio.ui.access import StudioContext
    from studio.ui.app import build_app

    try:
        policy = policy_from(args.auth, args.host, on_space=bool(os.environ.get("SPACE_ID")),
                             hf_admins=os.environ.get("STUDIO_ADMINS", ""))
        ws = ensure_demo_workspace(args.workspace, args.face_pack)
        note = resolve_pack(args.face_pack).note
    except (ValueError, MissingModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from starlette.middleware import Middleware

    from studio.ui.guard import FileGuard
    from studio.workspace import DB_NAME

    from studio.runs import reap

    reap(ws)  # runs whose worker died while the app was down are marked failed (rerun resumes them)
    ws.store.browse_columns()  # millions of images: Browse's in-memory columns start building in the background
    ctx = StudioContext(ws=ws, policy=policy, note=note, face_pack=args.face_pack)
    demo = build_app(ctx)
    auth = (lambda user, password: policy.users.verify(user, password)) if policy.mode == "local" else None
    counts = ws.store.counts()
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    print(f"CrossFaceID Studio\n  workspace: {ws.root} ({counts['images']} images, {counts['persons']} persons)\n"
          f"  face pack: {note or args.face_pack}\n  access: {policy.describe()}\n"
          f"  open: http://{shown}:{args.port}/", flush=True)
    # the workspace is never an allowed path: pages get single files (studio/ui/media.py) and the
    # guard serves them by role; the database and the users file are blocked outright
    private = [ws.root / f"{DB_NAME}{suffix}" for suffix in ("", "-wal", "-shm", "-journal")]
    if policy.users is not None:
        private.append(policy.users.path.resolve())
    demo.launch(server_name=args.host, server_port=args.port, auth=auth, allowed_paths=[str(ASSETS_DIR / "ui")],
                blocked_paths=[str(p) for p in private], show_error=False, auth_message="CrossFaceID Studio: sign in",
                head=annotate.KEYBOARD_JS, css=annotate.CSS,
                app_kwargs={"middleware": [Middleware(FileGuard, policy=policy, grants=ctx.grants)]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
