"""`python app.py`: builds the demo on a fresh workspace, serves it; refuses unsafe launches."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, running_app


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    ws = tmp_path_factory.mktemp("demo_ws")
    with running_app(ws, "--demo") as url:
        yield url, ws


@pytest.mark.slow
def test_demo_workspace_built_and_served(demo):
    from gradio_client import Client

    url, ws = demo
    assert (ws / "studio.db").is_file()
    client = Client(url, verbose=False)  # no auth configured: local single-user admin
    stats = client.predict(api_name="/statistics")
    # the six bundled photos: obama3 (small face) and obama_partial_face (491 px wide) are rejected
    assert stats["table1"]["before_curation"]["images"] == 6
    assert stats["table1"]["after_curation"]["images"] == 4
    assert stats["rejections_by_reason"] == {"low_resolution": 1, "small_face": 1}
    page = client.predict(status="fail", api_name="/browse")
    assert {it["reasons"][0] for it in page["items"]} == {"low_resolution", "small_face"}


@pytest.mark.slow
def test_a_new_workspace_of_ones_own_starts_empty(tmp_path, browser):
    """`--workspace NEW` is the user's: no demo photos (their own ingest would find 'duplicates' and file a
    photo under a demo person); the page shows an empty workspace."""
    from playwright.sync_api import expect

    from studio.workspace import Workspace

    with running_app(tmp_path / "mine") as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#who")  # no accounts: the local admin's page, rendered
        expect(page.get_by_role("tab", name="Browse")).to_be_visible()
        assert Workspace.open(tmp_path / "mine").store.counts()["images"] == 0
        page.close()


def test_existing_workspace_not_refilled_with_demo_photos(tmp_path, photos):
    from studio.dataset.ingest import ingest
    from studio.dataset.pipeline import ensure_demo_workspace
    from studio.workspace import Workspace

    (tmp_path / "src" / "someone").mkdir(parents=True)
    (tmp_path / "src" / "someone" / "a.jpg").write_bytes(photos["biden"].read_bytes())
    ingest(Workspace.open(tmp_path / "ws"), tmp_path / "src")
    ws = ensure_demo_workspace(tmp_path / "ws", "bundled")
    assert ws.store.counts() ["images"] == 1 and ws.store.counts()["analyzed"] == 0


@pytest.mark.slow
def test_open_host_without_accounts_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, "app.py", "--workspace", str(tmp_path), "--host", "0.0.0.0"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "SPACE_ID": ""})
    assert proc.returncode == 2
    assert "--auth" in proc.stderr and "Traceback" not in proc.stderr
