"""A study through a real Label Studio (the PyPI package, in a virtual environment of its own, on 127.0.0.1
with its default SQLite) and back: the exported config and tasks import, every score, annotator, comment
and sample id reads back through its API, the photos answer 200, and its JSON export imported into a
copy of the study gives the same Table 3."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
from conftest import free_port, wait_for

from studio.human import labelstudio as ls
from studio.human import studies as he
from studio.workspace import Workspace

pytestmark = pytest.mark.slow  # installs and starts Label Studio (about 3 minutes here)

VERSION = "1.23.0"
ADMIN, PASSWORD = "admin@studio.local", "ls-password-1"
TOKEN = "0123456789abcdef0123456789abcdef01234567"


def _label_studio_python(root: Path) -> Path:
    """A virtual environment with Label Studio (its pins clash with the studio's: openai, pyarrow, ...)."""
    given = os.environ.get("STUDIO_LABEL_STUDIO_VENV")  # a developer's existing one, to save the install
    env_dir = Path(given) if given else root / "venv"
    python = env_dir / "bin" / "python"
    if not python.exists():
        venv.create(env_dir, with_pip=True)
    if subprocess.run([python, "-c", "import label_studio"], capture_output=True).returncode != 0:
        proc = subprocess.run([python, "-m", "pip", "install", "-q", f"label-studio=={VERSION}"], capture_output=True,
                              text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return python


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """(url, an httpx client with the admin's token, the document root) of a running Label Studio."""
    import httpx

    root = tmp_path_factory.mktemp("labelstudio")
    python = _label_studio_python(root)
    docs = root / "documents"
    docs.mkdir()
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(root / "data"), "LOCAL_FILES_SERVING_ENABLED": "true",
           "LOCAL_FILES_DOCUMENT_ROOT": str(docs), "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([python, "-m", "label_studio.server", "start", "--no-browser", "--host", "127.0.0.1",
                             "--port", str(port), "--username", ADMIN, "--password", PASSWORD, "--user-token", TOKEN],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
        try:
            return httpx.get(f"{url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=600, what="Label Studio answering /health")
        # the token given at start is a legacy token, off by default since 1.17: switch it on as the admin
        web = httpx.Client(base_url=url, follow_redirects=True, timeout=60)
        web.get("/user/login")
        web.post("/user/login", data={"email": ADMIN, "password": PASSWORD,
                                      "csrfmiddlewaretoken": web.cookies.get("csrftoken")},
                 headers={"Referer": f"{url}/user/login"})
        on = web.post("/api/jwt/settings", json={"legacy_api_tokens_enabled": True, "api_tokens_enabled": True},
                      headers={"X-CSRFToken": web.cookies.get("csrftoken"), "Referer": f"{url}/"})
        assert on.status_code == 200, on.text
        api = httpx.Client(base_url=url, headers={"Authorization": f"Token {TOKEN}"}, timeout=120)
        assert api.get("/api/current-user/whoami").json()["email"] == ADMIN
        yield url, api, docs
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _study(docs: Path, photos) -> Workspace:
    """A workspace inside Label Studio's document root, with a scored study: three annotators, a duplicate,
    comments, a 0."""
    ws = Workspace.open(docs / "ws")
    (ws.root / "generated").mkdir()
    samples = []
    for i, name in enumerate(["obama", "biden", "astronaut", "obama2"]):
        model = ("zebra", "quokka")[i % 2]
        shutil.copy(photos[name], ws.root / f"generated/s{i}{photos[name].suffix}")
        shutil.copy(photos["obama"], ws.root / f"generated/face{i}.jpg")
        samples.append({"model": model, "prompt": f"a person smiling, take {i}",
                        "image_path": f"generated/s{i}{photos[name].suffix}", "face_path": f"generated/face{i}.jpg"})
    made = he.create_study(ws, "ls-study", samples, ["ann1", "ann2", "ann3"], per_item=0, duplicates=1, seed=5)
    he.create_study(ws, "ls-copy", samples, ["ann1", "ann2", "ann3"], per_item=0, duplicates=1, seed=5)
    assert made["items"] == 5
    he.set_status(ws, "ls-study", "open")
    sid = ws.store.study("ls-study")["id"]
    for k, annotator in enumerate(["ann1", "ann2", "ann3"]):
        for position in range(1, 6):
            scores = {"customization": (position + k) % 6, "fidelity": (2 * position + k) % 6, "quality": (k + 3) % 6}
            if annotator == "ann3" and position == 5:
                scores = {"customization": 0}  # partly scored
            he.save(ws, sid, annotator, position, scores, f"{annotator} on {position}" if position % 2 else None)
    return ws


def test_a_study_round_trips_through_label_studio(label_studio, photos, tmp_path):
    import httpx

    url, api, docs = label_studio
    ws = _study(docs, photos)
    out = tmp_path / "ls"
    exported = ls.export_labelstudio(ws, "ls-study", out, images="local-files", document_root=docs)
    assert exported["users_needed"] == ["ann1@studio.local", "ann2@studio.local", "ann3@studio.local"]
    for email in exported["users_needed"]:  # Label Studio takes annotations only from its own users
        made = api.post("/api/users", json={"email": email, "username": email.split("@")[0]})
        assert made.status_code == 201, made.text
    project = api.post("/api/projects", json={"title": "CrossFaceID study",
                                              "label_config": (out / "label_config.xml").read_text()})
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    storage = api.post("/api/storages/localfiles", json={"project": pid, "title": "studio workspace",
                                                         "path": str(ws.root / "generated"), "use_blob_urls": False})
    assert storage.status_code == 201, storage.text
    imported = api.post(f"/api/projects/{pid}/import", json=json.loads((out / "tasks.json").read_text()))
    assert imported.status_code == 201, imported.text
    assert imported.json()["task_count"] == 5 and imported.json()["annotation_count"] == exported["annotations"]

    export = api.get(f"/api/projects/{pid}/export", params={"exportType": "JSON"})
    assert export.status_code == 200
    csv_export = api.get(f"/api/projects/{pid}/export", params={"exportType": "CSV"})
    header = next(csv.reader(io.StringIO(csv_export.text)))
    assert csv_export.status_code == 200 and {"Customization", "Fidelity", "Quality", "comment", "item",
                                              "sample_id"} <= set(header), header  # the ratings stay in its CSV
    tasks = export.json()
    users = {u["id"]: u["email"] for u in api.get("/api/users").json()}
    sid = ws.store.study("ls-study")["id"]
    items = {it["idx"]: it for it in ws.store.study_items(sid)}
    expected = {(r["idx"], r["annotator"], r["criterion"]): r["score"] for r in ws.store.study_scores(sid)}
    got, comments = {}, {}
    for t in tasks:
        item = items[t["data"]["item"]]
        assert t["data"]["study"] == "ls-study" and t["data"]["prompt"] == item["prompt"]
        assert t["data"]["sample_id"] == Path(item["image_path"]).stem
        original = next((o for o in items.values() if o["id"] == item["duplicate_of"]), None)
        assert t["data"]["duplicate_of"] == (original["idx"] if original else None)
        for key in ("image", "face"):  # Label Studio serves each photo from the workspace
            photo = api.get(t["data"][key])
            assert photo.status_code == 200 and photo.headers["content-type"].startswith("image/"), t["data"][key]
        for a in t["annotations"]:
            who = users[a["completed_by"]].split("@")[0]
            for r in a["result"]:
                if r["from_name"] == "comment":
                    comments[(t["data"]["item"], who)] = r["value"]["text"][0]
                else:
                    got[(t["data"]["item"], who, r["from_name"].lower())] = int(r["value"]["choices"][0])
    assert got == expected and 0 in got.values()
    idx_of = {it["id"]: idx for idx, it in items.items()}
    assert comments == {(idx_of[c["item_id"]], c["annotator"]): c["comment"] for c in ws.store.study_comments(sid)}
    assert len(comments) == 9
    assert httpx.get(f"{url}{tasks[0]['data']['image']}").status_code in (401, 403)  # not without signing in

    # the way back: Label Studio's export (and its user list) into a copy of the study
    (tmp_path / "export.json").write_text(export.text)
    (tmp_path / "users.json").write_text(json.dumps(api.get("/api/users").json()))
    back = ls.import_labelstudio(ws, "ls-copy", tmp_path / "export.json", users=tmp_path / "users.json",
                                 from_study="ls-study")
    assert back["problems"] == [] and back["annotators"] == ["ann1", "ann2", "ann3"]
    assert back["scores_added"] == len(expected) and back["comments"] == len(comments)
    assert he.results(ws, "ls-copy")["table3"] == he.results(ws, "ls-study")["table3"]
    copy = ws.store.study("ls-copy")
    assert copy["done"] == ws.store.study("ls-study")["done"]
    again = ls.import_labelstudio(ws, "ls-copy", tmp_path / "export.json", users=tmp_path / "users.json",
                                  from_study="ls-study")
    assert again["scores_added"] == 0 and again["scores_same"] == len(expected)  # a rerun changes nothing
    # through the command, as a user runs it: without Label Studio's user list the user ids cannot be read
    from studio.cli import main

    args = ["study", "import-labelstudio", "--workspace", str(ws.root), "--name", "ls-copy",
            "--file", str(tmp_path / "export.json"), "--from-study", "ls-study"]
    assert main(args) == 1
    assert main([*args, "--users", str(tmp_path / "users.json")]) == 0
