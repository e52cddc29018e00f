"""The file guard against every route the running app mounts, uploads, sign-in back-off and what an
annotator's photos carry: real HTTP against the studio served in this process by studio.ui.app.launch
(the function app.py calls), so the test can read the app's own route table."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import statistics
import tarfile
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
from conftest import USERS, free_port
from conftest import http_session as session
from PIL import Image, PngImagePlugin

from studio.human import studies as he

MARKER = "admin-only-6f1c2a: model zebra-x vs quokka-y"
PRESS = "PRESS CAPTION: the 2026 gala, photographed by J. Doe"


def _exif_photo(src: Path, dest: Path) -> Path:
    """A copy of a real photo carrying what press photos carry: an EXIF caption, XMP, an ICC profile."""
    img = Image.open(src).convert("RGB")
    exif = Image.Exif()
    exif[0x010E] = PRESS  # ImageDescription
    exif[0x013B] = "J. Doe"  # Artist
    xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:description>{PRESS}</dc:description></x:xmpmeta>'.encode()
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img.save(dest, quality=92, exif=exif.tobytes(), xmp=xmp, icc_profile=icc)
    return dest


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, photos, users_file):
    """A workspace with an open study for `ann` (input face with press metadata, a sample PNG with text chunks),
    served in this process with a 1 MB upload cap."""
    from studio.auth import AccessPolicy, UsersFile
    from studio.ui.access import StudioContext
    from studio.ui.app import launch
    from studio.workspace import Workspace

    root = tmp_path_factory.mktemp("guarded")
    ws = Workspace.open(root / "ws")
    (ws.root / "generated").mkdir()
    _exif_photo(photos["obama"], ws.root / "generated" / "face.jpg")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "model zebra-x, seed 7")
    Image.open(photos["biden"]).convert("RGB").save(ws.root / "generated" / "zebra-x_s7.png", pnginfo=info)
    he.create_study(ws, "s1", [{"model": "zebra-x", "prompt": "a person smiling", "face_path": "generated/face.jpg",
                                "image_path": "generated/zebra-x_s7.png"}], ["ann"], per_item=1)
    he.set_status(ws, "s1", "open")
    ctx = StudioContext(ws=ws, policy=AccessPolicy("local", users=UsersFile(users_file)), face_pack="bundled")
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_MAX_UPLOAD_MB", "1")
    port = free_port()
    demo = launch(ctx, "127.0.0.1", port, block=False)
    mp.undo()
    # an admin's evaluation table as Gradio caches what a handler returned: <cache>/<hash>/table.md
    cached = Path(demo.app.uploaded_file_dir) / hashlib.sha256(MARKER.encode()).hexdigest()
    cached.mkdir(parents=True, exist_ok=True)
    secret = cached / "table.md"
    secret.write_text(f"| model | CLIP-T |\n| {MARKER} | 0.3 |\n")
    try:
        yield {"demo": demo, "ctx": ctx, "ws": ws, "url": f"http://127.0.0.1:{port}/", "secret": secret}
    finally:
        demo.close()


def app_routes(routes) -> list:
    """The running app's routes, included routers opened (the test's own walk, not the guard's)."""
    out = []
    for r in routes:
        inner = getattr(r, "original_router", None)
        out += app_routes(inner.routes) if inner is not None else [r]
    return out


def fetch(client: httpx.Client, path: str) -> tuple[int, bytes]:
    """Status and body of a GET of exactly ``path`` (http.client sends it as written: no client folds ``..``,
    ``%2E`` or ``//``) with the session's cookies; an event stream is read no further than its headers."""
    import http.client

    url = urllib.parse.urlsplit(str(client.base_url))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    cookies = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)
    try:
        conn.request("GET", path if path.startswith("/") else "/" + path, headers={"Cookie": cookies} if cookies else {})
        r = conn.getresponse()
        if (r.getheader("content-type") or "").startswith("text/event-stream"):
            return r.status, b""
        return r.status, r.read()
    finally:
        conn.close()


def route_urls(template: str, target: Path) -> list[str]:
    """URLs of one route template aimed at ``target``: every path parameter as the absolute path, with a
    doubled slash, through ``..`` (escaped, so no client folds it) and relative to the server's folder; other
    parameters as the file's name, stem or suffix."""
    dotted = f"{target.parent.parent}/%2E%2E/{target.parent.parent.name}/{target.parent.name}/{target.name}"
    relative = Path(*[".."] * len(Path.cwd().parts)).joinpath(*target.parts[1:]).as_posix().replace("..", "%2E%2E")
    variants = [str(target), "/" + str(target), dotted, relative]
    params = [p.split(":")[0] for p in template.split("{")[1:]]
    params = [p.split("}")[0] for p in params]
    if not params:
        return [template]
    urls = []
    for variant in variants:
        url = template
        for name in params:
            spec = next(s for s in template.split("{")[1:] if s.startswith(name))
            spec = spec.split("}")[0]
            if spec.endswith(":path"):
                value = variant
            else:
                value = {"ext": target.suffix.lstrip("."), "segment_id": target.stem}.get(name, target.name)
            url = url.replace("{" + spec + "}", value)
        urls.append(url)
    return urls


def test_every_route_of_the_running_app_refuses_an_admin_only_file(guarded):
    url, secret, demo = guarded["url"], guarded["secret"], guarded["demo"]
    admin, ann, visitor = session(url, "ada"), session(url, "ann"), session(url, None)
    # the control: the file is there and two routes do serve it (to an admin), so this test can fail
    for path in (f"gradio_api/file={secret}", f"gradio_api/file/{secret}", route_urls("/gradio_api/file/{p:path}", secret)[2]):
        status, body = fetch(admin, path)
        assert status == 200 and MARKER.encode() in body, (path, status)
    checked, file_routes = 0, []
    for route in app_routes(demo.app.routes):
        methods = getattr(route, "methods", None) or {"GET"}
        if not ({"GET", "HEAD"} & set(methods)) or not hasattr(route, "path") or route.path == "/logout":
            continue  # (signing out would end the sessions this walk needs)
        if ":path}" in route.path:
            file_routes.append(route.path)
        for path in route_urls(route.path, secret):
            for who, client in (("annotator", ann), ("visitor", visitor)):
                status, body = fetch(client, path)
                assert MARKER.encode() not in body, (who, route.path, path, status)
                if ":path}" in route.path and route.path.startswith("/gradio_api/file"):
                    assert status in (401, 403), (who, route.path, path, status)
                checked += 1
    assert fetch(ann, "gradio_api/login_check")[0] == 200  # still signed in at the end: every answer above counts
    assert checked > 100 and "/gradio_api/file/{path:path}" in file_routes and "/gradio_api/file={path_or_url:path}" in file_routes
    # the run-history page and the monitoring dashboard are admins' only
    for path in ("gradio_api/runs", "gradio_api/run-history/records", "monitoring", "gradio_api/openapi.json"):
        assert ann.get(path).status_code == 403, path


def test_a_route_the_guard_does_not_know_is_refused_to_non_admins(guarded):
    """As when a Gradio upgrade adds a route that serves files: not passed through."""
    from fastapi.responses import FileResponse

    app, url, secret = guarded["demo"].app, guarded["url"], guarded["secret"]
    app.add_api_route("/gradio_api/new-route/{name:path}", lambda name: FileResponse(name), methods=["GET"])
    try:
        path = f"gradio_api/new-route/{secret}"
        assert session(url, "ada").get(path).text.count(MARKER) == 1
        for who in ("ann", None):
            r = session(url, who).get(path)
            assert r.status_code == 403 and MARKER not in r.text, (who, r.status_code)
    finally:
        app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", "") != "/gradio_api/new-route/{name:path}"]


def test_uploads_are_capped_and_for_admins_only(guarded):
    url, demo = guarded["url"], guarded["demo"]
    upload_dir = Path(demo.app.uploaded_file_dir)
    before = {p for p in upload_dir.rglob("*") if p.is_file()}
    small = ("files", ("face.jpg", b"\xff\xd8" + b"x" * 200_000, "image/jpeg"))
    for who in ("ann", None):
        r = session(url, who).post("gradio_api/upload", files=[small])
        assert r.status_code in (401, 403), (who, r.status_code, r.text)
    assert {p for p in upload_dir.rglob("*") if p.is_file()} == before  # nothing written for them
    admin = session(url, "ada")
    ok = admin.post("gradio_api/upload", files=[small])
    assert ok.status_code == 200 and Path(ok.json()[0]).is_file()
    big = ("files", ("big.jpg", b"\xff\xd8" + b"x" * 2_000_000, "image/jpeg"))  # over STUDIO_MAX_UPLOAD_MB=1
    r = admin.post("gradio_api/upload", files=[big])
    assert r.status_code == 413, (r.status_code, r.text)


@pytest.mark.slow
def test_bad_upload_limit_stops_the_app_with_its_name(monkeypatch, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    env = {"STUDIO_MAX_UPLOAD_MB": "lots", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "app.py", "--workspace", str(tmp_path / "ws")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "STUDIO_MAX_UPLOAD_MB must be a positive number, got 'lots'" in done.stderr


def test_a_slow_first_page_does_not_stop_the_studio(monkeypatch, tmp_path, users_file):
    """Gradio's last start-up check is a HEAD of "/" with a 3 s timeout; on a busy machine it times out and
    Gradio stops with "When localhost is not accessible...". The studio starts and serves regardless."""
    import gradio.networking

    from studio.auth import AccessPolicy, UsersFile
    from studio.ui.access import StudioContext
    from studio.ui.app import launch
    from studio.workspace import Workspace

    probes: list[str] = []
    monkeypatch.setattr(gradio.networking, "url_ok", lambda url: probes.append(url) or False)  # the probe timed out
    ctx = StudioContext(ws=Workspace.open(tmp_path / "ws"), policy=AccessPolicy("local", users=UsersFile(users_file)),
                        face_pack="bundled")
    port = free_port()
    demo = launch(ctx, "127.0.0.1", port, block=False)
    try:
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=60)
        assert page.status_code == 200 and "CrossFaceID Studio" in page.text
    finally:
        demo.close()
    assert probes == []  # not asked: a slow answer to it can no longer stop the studio


def test_annotation_photos_reach_the_annotator_without_metadata(guarded):
    from studio.ui.annotate import item_outputs

    ctx, ws, url = guarded["ctx"], guarded["ws"], guarded["url"]
    original = Image.open(ws.root / "generated" / "face.jpg")
    assert PRESS in original.getexif().get(0x010E) and "xmp" in original.info and "icc_profile" in original.info
    from gradio.processing_utils import move_resource_to_block_cache

    out = item_outputs(ctx, "ann", he.annotator_study(ws, "s1", "ann"))  # what the Annotate tab's events send
    block = next(b for b in guarded["demo"].blocks.values() if getattr(b, "elem_id", None) == "annotate-face")
    face, image = (move_resource_to_block_cache(p, block) for p in out[3:5])  # as Gradio sends them to the page
    ann = session(url, "ann")
    for served, source in ((face, "generated/face.jpg"), (image, "generated/zebra-x_s7.png")):
        assert Path(served).name != Path(source).name and "zebra" not in served
        r = ann.get(f"gradio_api/file={served}")
        assert r.status_code == 200, r.status_code
        assert PRESS.encode() not in r.content and b"zebra" not in r.content and b"J. Doe" not in r.content
        got = Image.open(io.BytesIO(r.content))
        assert not dict(got.getexif()) and not {"exif", "xmp", "icc_profile", "parameters"} & set(got.info), got.info
        assert got.size == Image.open(ws.root / source).size
    # the other annotator-free route to the same copy: refused to a visitor, and a second annotator gets nothing
    assert session(url, None).get(f"gradio_api/file={face}").status_code in (401, 403)


def test_sign_in_backs_off_after_repeated_wrong_passwords(guarded, caplog):
    url = guarded["url"]
    c = httpx.Client(base_url=url, timeout=60)
    right = {"username": "ann", "password": USERS["ann"][1]}
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            assert c.post("login", data={**right, "password": "wrong-password"}).status_code == 400
        refused = c.post("login", data=right)  # the right password, but not even checked now
        assert refused.status_code == 429 and "try again in" in refused.json()["detail"]
        wait = int(refused.headers["retry-after"])
        assert wait >= 1
        # the address is in back-off too: another name from it waits as well
        assert c.post("login", data={"username": "ada", "password": USERS["ada"][1]}).status_code == 429
    assert "wrong passwords in a row" in caplog.text
    time.sleep(wait)  # the wait the server named
    assert c.post("login", data=right).status_code == 200  # and a success clears the name and the address
    assert c.post("login", data={**right, "password": "wrong-password"}).status_code == 400


def test_back_off_doubles_and_is_per_name_and_address():
    from studio.auth import SignInThrottle

    now = [100.0]
    t = SignInThrottle(free=3, cap=8, clock=lambda: now[0])
    for _ in range(3):
        assert t.wait("ann", "10.0.0.1") == 0
        t.failed("ann", "10.0.0.1")
    assert t.wait("ann", "10.0.0.2") == 1 and t.wait("bob", "10.0.0.1") == 1 and t.wait("bob", "10.0.0.2") == 0
    waits = []
    for _ in range(4):
        now[0] += t.wait("ann", "10.0.0.1")
        t.failed("ann", "10.0.0.1")
        waits.append(t.wait("ann", "10.0.0.1"))
    assert waits == [2, 4, 8, 8]  # doubling, capped
    t.succeeded("ann", "10.0.0.1")
    assert t.wait("ann", "10.0.0.1") == 0


def test_unknown_names_cost_the_same_scrypt_as_wrong_passwords(users_file, monkeypatch):
    import hashlib as real_hashlib

    from studio import auth
    from studio.auth import UsersFile

    calls = []
    scrypt = real_hashlib.scrypt

    def counted(*a, **k):
        calls.append(k.get("n"))
        return scrypt(*a, **k)

    f = UsersFile(users_file)
    f.verify("nobody", "x")  # the dummy hash is made once
    monkeypatch.setattr(auth.hashlib, "scrypt", counted)
    assert f.verify("nobody", "wrong") is False and f.verify("ann", "wrong") is False
    assert calls == [2**14, 2**14]
    monkeypatch.undo()
    known, unknown = [], []
    for _ in range(7):
        for name, times in (("ann", known), ("nobody", unknown)):
            t0 = time.perf_counter()
            f.verify(name, "wrong")
            times.append(time.perf_counter() - t0)
    assert statistics.median(unknown) > 0.4 * statistics.median(known), (known, unknown)


def test_shard_ingested_through_the_runs_api_accounts_for_every_member(guarded, photos, tmp_path):
    from gradio_client import Client

    from conftest import wait_run

    shard = tmp_path / "odd.tar"
    write_odd_shard(shard, photos)
    c = Client(guarded["url"], auth=("ada", USERS["ada"][1]), verbose=False)
    run = c.predict(kind="ingest", args=f"--json {shard}", api_name="/run_start")
    done = wait_run(c, run)
    assert done["status"] == "done", done["log"]
    result = c.predict(run_id=run, api_name="/run")["result"]
    assert result["added"] == 1 and result["rejected_by_reason"] == ODD_REASONS, result
    assert result["added"] + result["duplicates"] + result["already_ingested"] + result["rejected"] == ODD_MEMBERS


ODD_REASONS = {"duplicate_key": 1, "not_a_file": 2, "no_extension": 1, "bad_person": 2}
ODD_MEMBERS = 7  # one good sample, two bad persons, and four members that belong to no sample


def write_odd_shard(path: Path, photos) -> None:
    """A hand-made shard: a key used twice with different photos, a hard link, a directory, a file without an
    extension, and persons named like paths in the sample metadata."""
    def add(tar, name, data=b"", kind=tarfile.REGTYPE, link=""):
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, len(data)
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(path, "w") as tar:
        add(tar, "obama", kind=tarfile.DIRTYPE)
        add(tar, "obama/0001.jpg", photos["obama"].read_bytes())
        add(tar, "obama/0001.jpg", photos["obama2"].read_bytes())  # a different photo under the same name
        add(tar, "obama/0002.jpg", kind=tarfile.LNKTYPE, link="obama/0001.jpg")
        add(tar, "obama/README", b"no extension")
        add(tar, "x1.jpg", photos["biden"].read_bytes())
        add(tar, "x1.json", json.dumps({"person": "../../x"}).encode())
        add(tar, "x2.jpg", photos["astronaut"].read_bytes())
        add(tar, "x2.json", json.dumps({"person": "/etc/y"}).encode())


def test_quoted_traversal_is_the_same_file_to_the_guard(guarded):
    """Percent-escaped slashes and dots reach the same decision as the plain path."""
    url, secret = guarded["url"], guarded["secret"]
    ann = session(url, "ann")
    for path in (urllib.parse.quote(str(secret), safe=""), str(secret).replace("/", "%2F"),
                 f"{secret.parent}/%2E/{secret.name}"):
        for prefix in ("gradio_api/file=", "gradio_api/file/", "gradio_api/file//"):
            status, body = fetch(ann, prefix + path)
            assert status == 403 and MARKER.encode() not in body, (prefix, path, status)


def test_an_idle_app_checks_its_queue_every_20_ms_not_every_millisecond(guarded):
    """Gradio's empty-queue loop sleeps 1 ms on Linux (7% of a core per idle app, measured); the studio's
    running queue sleeps 20 ms. Fails if a Gradio upgrade renames what idle_politely sets."""
    queue = guarded["demo"]._queue
    assert queue.sleep_when_free == 0.02 and queue.progress_update_sleep_when_free == 0.1


def test_one_photo_asked_for_by_many_events_at_once_reaches_every_one(tmp_path, photos):
    """A page's load and tab events ask for the same clean copy in parallel threads (queue=False):
    each must get the photo, not an error that blanks the image (a shared temp name did that)."""
    import shutil
    import threading

    from studio.ui.media import MediaServer
    from studio.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    (ws.root / "generated").mkdir()
    _exif_photo(photos["obama"], ws.root / "generated" / "face.jpg")
    media = MediaServer(ws, tmp_path / "serve")
    n = 8
    for _ in range(15):
        shutil.rmtree(media.dir, ignore_errors=True)
        start = threading.Barrier(n)
        got: list = []

        def ask(how):
            start.wait()
            try:
                got.append(how("generated/face.jpg"))
            except Exception as e:  # noqa: BLE001 - recorded, asserted below
                got.append(e)

        threads = [threading.Thread(target=ask, args=(m,)) for m in [media.clean, media.download, media.file, media.clean] * (n // 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(isinstance(p, str) for p in got), got
        for p in set(got):
            assert Image.open(p).size == Image.open(ws.root / "generated" / "face.jpg").size
        assert not [f for f in media.dir.rglob("*") if f.is_file() and f.suffix == ".tmp"]
