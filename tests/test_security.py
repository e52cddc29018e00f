"""The workspace is private: real HTTP requests against launched apps, as an attacker would send them."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from conftest import REPO, free_port
from conftest import http_session as session


def private_files(ws, users_file) -> dict:
    media = next(ws.root.glob("media/*/*"))
    return {"database": ws.root / "studio.db", "wal": ws.root / "studio.db-wal", "users file": users_file,
            "photo in the workspace": media}


@pytest.mark.parametrize("user", [None, "ann", "ada"])
def test_workspace_files_are_refused_to_everyone(served, curated_ws, users_file, user):
    c = session(served, user)
    assert (curated_ws.root / "studio.db-wal").exists()
    for name, path in private_files(curated_ws, users_file).items():
        for prefix in ("gradio_api/file=", "file="):
            r = c.get(f"{prefix}{path}")
            assert r.status_code in ((401, 403) if prefix.startswith("gradio_api") else (401, 403, 404)), \
                (user, name, prefix, r.status_code)
            assert b"SQLite format" not in r.content and b"scrypt" not in r.content
    # the same database through a path with ../ and URL escapes
    sneaky = f"gradio_api/file={curated_ws.root}/media/../studio.db".replace("/", "%2F")
    assert c.get(sneaky).status_code in (401, 403, 404)


@pytest.fixture(scope="module")
def space_app(curated_ws, tmp_path_factory):
    """app.py as a Hugging Face Space starts it: SPACE_ID and the OAuth variables the Space injects."""
    port = free_port()
    env = {**os.environ, "SYSTEM": "spaces", "SPACE_ID": "crossfaceid/studio-test", "SPACE_HOST": f"127.0.0.1:{port}", "OAUTH_CLIENT_ID": "test-client",
           "OAUTH_CLIENT_SECRET": "test-secret", "OAUTH_SCOPES": "openid profile",
           "OPENID_PROVIDER_URL": "http://127.0.0.1:9", "STUDIO_ADMINS": "alice", "STUDIO_FACE_PACK": "bundled",
           "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("space_tmp")), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "app.py", "--workspace", str(curated_ws.root), "--host", "127.0.0.1",
                             "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError("Space-mode app exited:\n" + "".join(lines))
        lines.append(line)
        if "Running on" in line:
            break
    try:
        yield url, "".join(lines)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
def test_space_mode_starts_with_login_and_guards_files(space_app, curated_ws):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, startup = space_app
    assert f"workspace: {curated_ws.root}" in startup and "Hugging Face sign-in; admins: alice" in startup
    assert httpx.get(url, timeout=30).status_code == 200
    # the OAuth routes are mounted (the provider itself is unreachable here, so not a 302)
    assert httpx.get(url + "login/huggingface", timeout=30).status_code != 404
    for path in (curated_ws.root / "studio.db", next(curated_ws.root.glob("media/*/*"))):
        assert httpx.get(f"{url}gradio_api/file={path}", timeout=30).status_code == 403
    with pytest.raises(AppError, match="Access denied"):
        Client(url, verbose=False).predict(api_name="/statistics")


@pytest.mark.slow
def test_startup_says_workspace_pack_and_url(curated_ws, users_file, tmp_path):
    port = free_port()
    env = {**os.environ, "STUDIO_FACE_PACK": "bundled", "GRADIO_TEMP_DIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([sys.executable, "app.py", "--workspace", str(curated_ws.root), "--auth", str(users_file),
                             "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out = ""
        while "open:" not in out and proc.poll() is None:
            out += proc.stdout.readline()
        assert f"workspace: {curated_ws.root} (9 images, 5 persons)" in out
        assert "face pack: bundled" in out and f"open: http://127.0.0.1:{port}/" in out
    finally:
        proc.terminate()
        proc.wait(timeout=20)
