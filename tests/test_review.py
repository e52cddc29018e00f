"""Caption review, attribute tags, and the Captions tab's API against a launched app."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
from conftest import USERS, running_app, wait_run
from oai_server import LocalOpenAI, Reply

from studio.captions import review
from studio.dataset.attributes import DEFAULT_VOCABULARY, compile_vocabulary, tags_for
from studio.dataset.browse import BrowseFilter, browse
from studio.dataset.ingest import ingest
from studio.workspace import Workspace


@pytest.fixture()
def ws(tmp_path, photos):
    """Three photos with imported captions (one flagged), through a CSV table."""
    for name in ("obama", "obama2", "astronaut"):
        shutil.copy(photos[name], tmp_path / photos[name].name)
    pd.DataFrame({"file_name": ["obama.jpg", "obama2.jpg", "astronaut.png"], "person": ["obama", "obama", "eileen"],
                  "caption": ["A smiling man in a dark suit.", "1. **Hair:** short\n2. **Mouth:** open",
                              "A woman in an orange spacesuit, not smiling, wearing no glasses."]}
                 ).to_csv(tmp_path / "meta.csv", index=False)
    w = Workspace.open(tmp_path / "ws")
    ingest(w, tmp_path / "meta.csv")
    return w


def ids(ws) -> dict[str, int]:
    return {r["source"].split("/")[-1]: r["id"] for r in ws.store.image_table()}


@pytest.mark.parametrize("text, tags", [
    ("A smiling man wearing glasses and a baseball cap.", ["glasses", "hat", "smiling"]),
    ("She wears sunglasses; her expression is neutral.", ["neutral", "sunglasses"]),
    ("A man, not smiling, seen in profile, looking up.", ["looking up", "side profile"]),
    ("A young woman with a surprised look and her mouth open.", ["mouth open", "surprised"]),
    ("Close-up of a face.", []),
])
def test_tags_from_captions(text, tags):
    assert tags_for(text, compile_vocabulary(DEFAULT_VOCABULARY)) == tags


def test_imported_captions_are_version_one_and_flagged(ws):
    rows, total = ws.store.caption_queue(status="imported")
    assert total == 3
    flagged = [r for r in rows if r["flags"]]
    assert [r["flags"] for r in flagged] == [["structured"]]
    assert ws.store.tags_of(ids(ws)["obama.jpg"]) == ["smiling"]
    assert ws.store.tags_of(ids(ws)["astronaut.png"]) == []  # negated


def test_review_actions_keep_every_version(ws):
    i = ids(ws)["obama2.jpg"]
    review.edit(ws, i, 1, "A man speaking with his mouth open, wearing a dark suit.", "rita")
    review.approve(ws, i, 2, "sam")
    hist = ws.store.caption_history(i)
    assert [(h["version"], h["status"], h["author"], h["origin"]) for h in hist] == [
        (1, "imported", "import", "import"), (2, "edited", "rita", "human"), (3, "approved", "sam", "human")]
    assert hist[1]["flags"] == [] and hist[0]["flags"] == ["structured"]
    assert all(h["created_at"] for h in hist)
    assert ws.store.tags_of(i) == ["mouth open"]
    # browse sees the current caption and its status
    page = browse(ws, BrowseFilter(caption_text="speaking", caption_status="approved"))
    assert [r["image_id"] for r in page.items] == [i]
    review.reject(ws, i, 3, "sam")
    assert ws.store.current_caption(i)["status"] == "rejected" and ws.store.tags_of(i) == []
    with pytest.raises(ValueError, match="cannot be empty"):
        review.edit(ws, i, 4, "  ", "rita")
    with pytest.raises(ValueError, match="reviewer's name"):
        review.approve(ws, i, 4, "")


def test_bulk_approve_only_unflagged(ws):
    assert review.bulk_approve_unflagged(ws, "sam") == 2
    statuses = {r["image_id"]: r["status"] for r in ws.store.caption_queue()[0]}
    assert statuses[ids(ws)["obama2.jpg"]] == "imported"  # the flagged one waits for a human
    assert review.bulk_approve_unflagged(ws, "sam") == 0


@pytest.fixture()
def served_captions(ws, users_file):
    with running_app(ws.root, "--auth", str(users_file)) as url:
        yield url, ws


@pytest.mark.slow
def test_captions_api_end_to_end(served_captions):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, ws = served_captions
    admin = Client(url, auth=("ada", USERS["ada"][1]), verbose=False)
    with LocalOpenAI(lambda n, body: Reply(text="A woman with short brown hair smiles; she wears a hat.")) as server:
        run_id = admin.predict(api_key="sk-ui-session-key-123456", base_url=server.url, model="gpt-4o",
                               concurrency=4, kept_only=False, api_name="/caption_run")
        run = wait_run(admin, run_id)
        assert run["status"] == "done" and run["kind"] == "caption" and run["author"] == "ada", run
        report = run["result"]
        assert report["captioned"] == 3 and report["failed"] == 0
        assert "sk-ui-session-key-123456" not in run["command"] + run["log"] + str(run["settings"])
        assert server.auth_headers == ["Bearer sk-ui-session-key-123456"] * 3
        queue = admin.predict(status="generated", api_name="/caption_queue")
        assert queue["total"] == 3 and all(c["author"] == "ada" for c in queue["captions"])
        target = queue["captions"][0]["image_id"]
        edited = admin.predict(image_id=target, action="edit", version=2, text="A woman wearing sunglasses.",
                               api_name="/caption_action")
        assert (edited["version"], edited["status"], edited["author"]) == (3, "edited", "ada")
        regen = admin.predict(image_id=target, action="regenerate", api_key="sk-ui-session-key-123456",
                              base_url=server.url, api_name="/caption_action")
        assert regen["status"] == "generated" and regen["version"] == 4 and len(server.requests) == 4
        with pytest.raises(AppError, match="unknown action"):
            admin.predict(image_id=target, action="delete", version=4, api_name="/caption_action")
        with pytest.raises(AppError, match="you saw version 3, the current one is version 4"):
            admin.predict(image_id=target, action="approve", version=3, api_name="/caption_action")
        with pytest.raises(AppError, match="image id must be a whole number, got 'abc'"):
            admin.predict(image_id="abc", api_name="/caption_history")
    history = admin.predict(image_id=target, api_name="/caption_history")
    assert [h["status"] for h in history] == ["imported", "generated", "edited", "generated"]
    assert admin.predict(api_name="/caption_bulk_approve") == 3
    for path in ws.root.rglob("*"):
        if path.is_file():
            assert b"sk-ui-session-key-123456" not in path.read_bytes(), path
    annotator = Client(url, auth=("ann", USERS["ann"][1]), verbose=False)
    for endpoint, kw in (("/caption_run", {}), ("/caption_queue", {}), ("/caption_history", {"image_id": target}),
                         ("/caption_action", {"image_id": target, "action": "approve"})):
        with pytest.raises(AppError, match="Access denied"):
            annotator.predict(**kw, api_name=endpoint)


def test_review_from_the_command_line(ws):
    """The CLI offers the review actions of the Captions tab, with the same stale-version check."""
    import json

    from conftest import studio_cli

    def studio(*args):
        return studio_cli(*args, "--workspace", ws.root)

    i = ids(ws)["obama.jpg"]
    ok = studio("review", "--approve", str(i), "--version", "1", "--author", "vera", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["status"] == "approved"
    stale = studio("review", "--edit", str(i), "--version", "1", "--text", "Old view.")
    assert stale.returncode == 2 and "you saw version 1, the current one is version 2 (approved by vera)" in stale.stderr
    listed = json.loads(studio("list", "--caption-status", "approved", "--json").stdout)
    assert [r["id"] for r in listed] == [i]
    shown = json.loads(studio("show", str(i), "--json").stdout)
    assert shown["provenance"]["caption"]["by"] == "vera" and shown["caption_status"] == "approved"
