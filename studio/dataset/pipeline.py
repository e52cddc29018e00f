"""Chains of stages that the CLI and the UI both run."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from .analyze import analyze
from ..config import ASSETS_DIR
from .curate import curate
from .ingest import ingest
from ..workspace import Workspace

DEMO_SOURCE = ASSETS_DIR / "demo"


def build_dataset(ws: Workspace, source: str | Path, pack_spec: str = "auto",
                  progress: Callable[..., Iterable] | None = None) -> dict:
    """ingest -> analyze -> curate; every stage skips the work already done."""
    ing = ingest(ws, source, progress=progress)
    ana = analyze(ws, pack_spec, progress=progress)
    cur = curate(ws)
    return {"ingest": ing.as_dict(), "analyze": ana.as_dict(), "curate": cur.as_dict()}


def ensure_demo_workspace(root: str | Path, pack_spec: str = "auto", say=None) -> Workspace:
    """The bundled demo workspace, built from the public-domain photos in assets/demo on first use
    (``say`` hears what is being done: the first launch loads the face models)."""
    ws = Workspace.open(root)
    counts = ws.store.counts()
    unfinished_demo = ws.store.get_setting("demo_source") and counts["curated"] < counts["images"]
    if counts["images"] == 0 or unfinished_demo:  # never adds demo photos to a workspace of the user's
        if say:
            say(f"building the demo workspace in {ws.root} from {DEMO_SOURCE} (first launch only: ingest, face "
                "analysis, curation)...")
        ws.store.set_setting("demo_source", str(DEMO_SOURCE))
        build_dataset(ws, DEMO_SOURCE, pack_spec)
        if say:
            counts = ws.store.counts()
            say(f"demo workspace ready: {counts['images']} photos of {counts['persons']} persons")
    return ws
