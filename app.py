"""Launch CrossFaceID Studio: `python app.py` opens the bundled demo workspace.

The demo workspace is built on first launch from the public-domain photos in assets/demo
(ingest, face analysis with the best face pack on this machine, curation).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from studio.config import default_workspace, face_pack_spec

    parser = argparse.ArgumentParser(description="CrossFaceID Studio")
    parser.add_argument("--workspace", type=Path, default=default_workspace(),
                        help="workspace directory; an empty or new one is filled with the demo photos")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to listen on")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), help="port to listen on")
    parser.add_argument("--face-pack", default=face_pack_spec(), help="face models for the demo build: auto | antelopev2 | bundled | DIR")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from studio.faces import resolve_pack
    from studio.pipeline import ensure_demo_workspace
    from studio.ui.app import build_app

    ws = ensure_demo_workspace(args.workspace, args.face_pack)
    note = resolve_pack(args.face_pack).note
    demo = build_app(ws, note)
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(ws.root)], show_error=False)


if __name__ == "__main__":
    main()
