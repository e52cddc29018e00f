"""Time to the first page: `python app.py` on a built demo workspace vs a one-line Gradio app.

What a user waits for after typing the command: from starting the process to the first HTTP 200
of the page. The baseline is the least any Gradio app costs, a process that imports gradio and
launches a Blocks with one Markdown; ours opens the workspace, builds every tab and serves it.
Rounds alternate the two; medians are compared. Last line: ``ratio: <baseline s / ours s>``
(below 1: ours is slower; the goal is an absolute one, 5 s to the first page, printed above).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MINIMAL = ("import gradio as gr, sys\n"
           "with gr.Blocks() as demo:\n"
           "    gr.Markdown('hello')\n"
           "demo.launch(server_name='127.0.0.1', server_port=int(sys.argv[1]))\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_page(cmd: list[str], port: int, timeout: float = 300) -> float:
    """Seconds from starting ``cmd`` to the first HTTP 200 of its page."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                sys.exit(f"{cmd[:3]} exited with code {proc.returncode} before serving")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.05)
        sys.exit(f"no page after {timeout} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workspace", type=Path, help="a built workspace (default: build the demo once, bundled faces)")
    args = p.parse_args()
    ws = args.workspace
    if ws is None:
        from studio.dataset.pipeline import ensure_demo_workspace

        ws = Path(tempfile.mkdtemp(prefix="bench-startup-")) / "demo"
        ensure_demo_workspace(ws, "bundled").store.close()
    script = Path(tempfile.mkdtemp(prefix="bench-minimal-")) / "minimal.py"
    script.write_text(MINIMAL)
    ours, minimal = [], []
    for k in range(args.rounds):
        runs = [("minimal", lambda port: first_page([sys.executable, str(script), str(port)], port)),
                ("ours", lambda port: first_page([sys.executable, "app.py", "--workspace", str(ws), "--port", str(port),
                                                  "--face-pack", "bundled"], port))]
        for name, run in (runs if k % 2 == 0 else runs[::-1]):  # alternate which goes first
            (ours if name == "ours" else minimal).append(run(free_port()))
        print(f"round {k + 1}: python app.py {ours[-1]:.2f} s, a one-line Gradio app {minimal[-1]:.2f} s")
    o, m = statistics.median(ours), statistics.median(minimal)
    print(f"time to the first page (median of {args.rounds}): python app.py {o:.2f} s (goal 5 s), "
          f"one-line Gradio app {m:.2f} s")
    print(f"ratio: {m / o:.3f}")


if __name__ == "__main__":
    main()
