"""Latency of "save a score and load the next item" with 8 annotators at once, over HTTP as the page calls it.

Setup: a workspace with a 10,000-item study (every item assigned to all 8 annotators: 80,000
assignments), served by ``python app.py --auth`` as a user would run it. Each annotator is a
separate process with its own login session posting to ``/gradio_api/run/annotate_save`` (the
endpoint the Annotate tab's save uses, outside Gradio's queue) with its session hash, as the page
does, one save after another, scoring its items in order. Latency is measured per request, client side, after a warm-up.

Prints median and p95 in ms; last line ``ratio: <100 / p95 ms>`` (goal p95 <= 100 ms, i.e. ratio >= 1).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ANNOTATORS = {f"bench{i}": f"bench-password-{i}" for i in range(8)}


def build(root: Path, items: int) -> tuple[Path, Path]:
    from studio.human import studies as he
    from studio.auth import UsersFile
    from studio.workspace import Workspace

    users = root / "users.json"
    for name, password in ANNOTATORS.items():
        UsersFile(users).add(name, password, "annotator")
    ws = Workspace.open(root / "ws")
    (ws.root / "generated").mkdir()
    photos = sorted((REPO / "assets" / "demo").rglob("*.jpg"))
    for i, p in enumerate(photos):
        shutil.copy(p, ws.root / "generated" / f"s{i}.jpg")
    samples = [{"model": f"model-{i % 2}", "prompt": f"a person smiling {i}", "image_path": f"generated/s{i % len(photos)}.jpg",
                "face_path": f"generated/s{(i + 1) % len(photos)}.jpg"} for i in range(items)]
    he.create_study(ws, "bench", samples, list(ANNOTATORS), per_item=len(ANNOTATORS), seed=0)
    he.set_status(ws, "bench", "open")
    ws.store.close()
    return ws.root, users


def launch(workspace: Path, users: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "STUDIO_FACE_PACK": "bundled"}
    proc = subprocess.Popen([sys.executable, "app.py", "--workspace", str(workspace), "--port", str(port), "--auth",
                             str(users)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("app.py did not start")


def annotator(args: tuple[str, str, int, int]) -> list[float]:
    import httpx

    import secrets

    url, who, saves, warmup = args
    session = secrets.token_hex(6)  # the page sends its session hash with every event, so Gradio keeps its state
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/login", data={"username": who, "password": ANNOTATORS[who]})
        r.raise_for_status()
        out = []
        position = 1
        for n in range(warmup + saves):
            for criterion in ("customization", "fidelity", "quality"):
                start = time.perf_counter()
                r = c.post("/gradio_api/run/annotate_save",
                           json={"data": ["bench", position, {criterion: (n + position) % 6}, None],
                                 "session_hash": session})
                elapsed = time.perf_counter() - start
                r.raise_for_status()
                body = r.json()
                if "error" in body or "data" not in body:
                    raise RuntimeError(f"{who}: {body}")
                if n >= warmup:
                    out.append(elapsed * 1000)
                position = body["data"][0]["next"]["position"] if criterion == "quality" else position
    return out


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--saves", type=int, default=30, help="items scored (3 saves each) per annotator, timed")
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        workspace, users = build(Path(tmp), args.items)
        print(f"study of {args.items} items x {len(ANNOTATORS)} annotators built in {time.perf_counter() - start:.1f} s")
        proc, url = launch(workspace, users)
        try:
            with mp.get_context("spawn").Pool(len(ANNOTATORS)) as pool:
                lat = np.concatenate(pool.map(annotator, [(url, w, args.saves, args.warmup) for w in ANNOTATORS]))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    p50, p95 = np.percentile(lat, 50), np.percentile(lat, 95)
    print(f"{len(lat)} saves by {len(ANNOTATORS)} concurrent annotators: median {p50:.1f} ms, p95 {p95:.1f} ms, "
          f"max {lat.max():.1f} ms")
    print(f"ratio: {100 / p95:.2f}")


if __name__ == "__main__":
    main()
