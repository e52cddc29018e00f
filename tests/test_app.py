"""`python app.py` on a fresh workspace: builds the demo and serves it (real server, real client)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_app(tmp_path_factory):
    ws = tmp_path_factory.mktemp("demo_ws")
    port = free_port()
    env = {**os.environ, "STUDIO_FACE_PACK": "bundled", "GRADIO_TEMP_DIR": str(ws / "gradio_tmp")}
    proc = subprocess.Popen([sys.executable, "app.py", "--workspace", str(ws), "--port", str(port)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited: {proc.stdout.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("app.py did not start within 120 s")
    yield url, ws
    proc.terminate()
    proc.wait(timeout=20)


def test_demo_workspace_built_and_served(demo_app):
    from gradio_client import Client

    url, ws = demo_app
    assert (ws / "studio.db").is_file()
    client = Client(url, verbose=False)
    table, reasons, gallery = client.predict(api_name="/overview")
    rows = {r[0]: r[1:] for r in table["data"]}
    # the six bundled photos: obama3 (small face) and obama_partial_face (narrow) are rejected
    assert rows["Images"] == [6, 4]
    assert rows["Persons"] == [3, 3]
    assert {r[0]: r[1] for r in reasons["data"]} == {"low_resolution": 1, "small_face": 1}
    captions = sorted(item["caption"] for item in gallery)
    assert len(captions) == 6
    assert sum("PASS" in c for c in captions) == 4
    assert any("obama · FAIL · small_face" == c for c in captions)
