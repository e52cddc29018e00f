"""The Annotate tab through the app: blind items, keyboard scoring in a real browser with resume, 8 annotators
saving in parallel through the API (nothing lost or doubled), and every refusal."""
from __future__ import annotations

import re
import shutil
import threading

import pytest
from conftest import USERS, running_app
from gradio_client import Client
from gradio_client.exceptions import AppError

from studio.human import studies as he
from studio.workspace import Workspace

pytestmark = pytest.mark.slow  # a served app with an 84-item study for 8 annotators

MODELS = ["zebra-model-x", "quokka-model-y"]  # names that must never reach an annotator
CROWD = {f"ann{i}": f"crowd-password-{i}" for i in range(8)}


@pytest.fixture(scope="module")
def annotate_app(tmp_path_factory, photos):
    from studio.auth import UsersFile

    root = tmp_path_factory.mktemp("annotate")
    users = root / "users.json"
    for name, (role_, password) in USERS.items():
        UsersFile(users).add(name, password, role_)
    for name, password in CROWD.items():
        UsersFile(users).add(name, password, "annotator")
    ws = Workspace.open(root / "ws")
    (ws.root / "generated").mkdir()
    samples = []
    for i, name in enumerate(["obama", "obama2", "biden", "astronaut", "yaoming", "t1"]):
        model = MODELS[i % 2]
        img = f"generated/{model}_l0.80_s{i}.png"  # a file name that names its model, as generation writes them
        shutil.copy(photos[name], ws.root / img)
        shutil.copy(photos["obama"], ws.root / f"generated/face{i}.jpg")
        samples.append({"model": model, "prompt": f"a photo of a person smiling, take {i}", "image_path": img,
                        "face_path": f"generated/face{i}.jpg"})
    he.create_study(ws, "blind", samples, ["ann", "ann0"], per_item=2, seed=3)
    he.set_status(ws, "blind", "open")
    he.create_study(ws, "load", samples * 14, list(CROWD), per_item=8, seed=1)  # 84 items for each of 8 annotators
    he.set_status(ws, "load", "open")
    he.create_study(ws, "draft-only", samples, ["ann"], per_item=1)
    ws.store.close()
    with running_app(ws.root, "--auth", str(users)) as url:
        yield ws, url


def client(url, who):
    password = CROWD.get(who) or USERS[who][1]
    return Client(url, auth=(who, password), verbose=False)


def test_eight_annotators_save_in_parallel_nothing_lost_or_doubled(annotate_app):
    ws, url = annotate_app
    sid = ws.store.study("load")["id"]
    errors = []

    def work(who: str):
        """One annotator's browser session: logged in, posting saves with its session hash as the page does."""
        import secrets

        import httpx

        try:
            with httpx.Client(base_url=url, timeout=60) as c:
                c.post("login", data={"username": who, "password": CROWD[who]}).raise_for_status()
                session, n = secrets.token_hex(6), 0
                for position in range(1, 85):
                    for criterion in ("customization", "fidelity", "quality"):
                        if n == 250:
                            return
                        r = c.post("gradio_api/run/annotate_save", json={
                            "data": ["load", position, {criterion: (position + n) % 6}, None], "session_hash": session})
                        if r.status_code != 200 or "error" in r.json():
                            errors.append(f"{who}: {r.status_code} {r.text[:200]}")
                        n += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{who}: {exc}")

    def run_all():
        threads = [threading.Thread(target=work, args=(w,)) for w in CROWD]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    run_all()
    assert not errors, errors[:3]
    rows = ws.store.study_scores(sid)
    assert len(rows) == 8 * 250 and ws.store.score_history_count(sid) == 8 * 250
    keys = {(r["item_id"], r["annotator"], r["criterion"]) for r in rows}
    assert len(keys) == len(rows)  # no duplicates
    assert {w: sum(1 for r in rows if r["annotator"] == w) for w in CROWD} == {w: 250 for w in CROWD}
    run_all()  # the same scores again change no count
    assert not errors, errors[:3]
    assert len(ws.store.study_scores(sid)) == 2000 and ws.store.score_history_count(sid) == 2000
    assert ws.store.annotator_progress(sid, "ann0")[0] == 83  # 250 = 83 items x 3 + 1


def test_refusals_for_annotators_and_bad_scores(annotate_app):
    ws, url = annotate_app
    c = client(url, "ann0")
    item = c.predict(study="blind", api_name="/annotate_item")
    assert set(item) == {"position", "total", "done", "finished", "prompt", "scores", "comment", "missing"}
    assert not any(m in str(item) for m in MODELS)
    for scores, msg in (({"quality": 6}, "0 to 5"), ({"quality": 2.5}, "0 to 5"), ({"quality": "four"}, "0 to 5"),
                        ({"taste": 3}, "unknown criterion"), ({"quality": "\uff15"}, "0 to 5"),  # full-width 5
                        ({"quality": "\u0664"}, "0 to 5"), ({"quality": " 4 "}, "0 to 5"), ({"quality": "04"}, "0 to 5"),
                        ({"quality": 4.0}, "0 to 5"), ({"quality": True}, "0 to 5"), ({"quality": 2**70}, "0 to 5")):
        with pytest.raises(AppError, match=msg):
            c.predict(study="blind", position=1, scores=scores, api_name="/annotate_save")
    for position in (2.9, 1.5, True, 2**70, "2", -1, 0):  # never rounded, never a 500
        with pytest.raises(AppError, match="item position must be a whole number from 1"):
            c.predict(study="blind", position=position, scores={"quality": 3}, api_name="/annotate_save")
        with pytest.raises(AppError, match="item position must be a whole number from 1"):
            c.predict(study="blind", position=position, api_name="/annotate_item")
    with pytest.raises(AppError, match="no open study of that name"):
        c.predict(study="\u0664", position=1, scores={"quality": 3}, api_name="/annotate_save")
    with pytest.raises(AppError, match="not one of your items"):
        c.predict(study="blind", position=999, scores={"quality": 1}, api_name="/annotate_save")
    with pytest.raises(AppError, match="draft|assigned to you"):
        c.predict(study="draft-only", position=1, scores={"quality": 1}, api_name="/annotate_save")
    sid = ws.store.study("blind")["id"]
    assert [r for r in ws.store.study_scores(sid) if r["annotator"] == "ann0"] == []  # nothing stored
    for api, kwargs in (("/study_results", {"study": "blind"}), ("/study_status", {"study": "blind", "status": "closed"}),
                        ("/browse", {}), ("/runs", {})):
        with pytest.raises(AppError, match="Access denied: this needs the admin role"):
            c.predict(**kwargs, api_name=api)
    assert ws.store.study("blind")["status"] == "open"
    admin = client(url, "ada")
    admin.predict(study="draft-only", status="open", api_name="/study_status")
    ann = client(url, "ann")
    assert ann.predict(study="draft-only", position=1, scores={"quality": 4}, api_name="/annotate_save")["saved"]["done"] is False
    admin.predict(study="draft-only", status="closed", api_name="/study_status")
    with pytest.raises(AppError, match="closed"):
        ann.predict(study="draft-only", position=1, scores={"quality": 2}, api_name="/annotate_save")
    res = admin.predict(study="draft-only", api_name="/study_results")
    assert res["scores"] == 1 and res["study"]["status"] == "closed"
    assert [(r["criterion"], r["n"]) for r in res["table3"]] == [("quality", 1)] and res["table3"][0]["model"] in MODELS


@pytest.mark.browser
def test_annotator_scores_with_the_keyboard_resumes_after_reload_and_never_sees_a_model(browser, annotate_app, tmp_path):
    from playwright.sync_api import expect
    from conftest import artifacts_dir, login, settled

    ws, url = annotate_app
    seen: list[str] = []

    def keep(response):
        if "event-stream" in (response.headers.get("content-type") or ""):
            return  # a stream of queued events; the annotator's events are answered outside the queue
        try:
            seen.append(response.url + "\n" + response.text())
        except Exception:  # noqa: BLE001 - bodies of redirects and images are not text
            seen.append(response.url)

    page = login(browser, url, "ann")
    page.on("response", keep)
    progress = page.locator("#annotate-progress")
    expect(progress).to_contain_text("0 / 6 done")
    page.locator("#annotate-image img").wait_for()
    page.locator("body").click(position={"x": 5, "y": 5})  # focus the page, not a field
    for n, keys in enumerate(("453", "210", "555"), start=1):
        expect(page.locator("#annotate-position input")).to_have_value(str(n))
        for criterion, k in zip(("customization", "fidelity", "quality"), keys):
            page.keyboard.press(k)
            expect(page.locator(f"#scale-{criterion} input[value='{k}']")).to_be_checked()
        expect(progress).to_contain_text("saved")
        page.keyboard.press("Enter")
        expect(progress).to_contain_text(f"{n} / 6 done")
    page.reload()
    expect(page.locator("#annotate-progress")).to_contain_text("3 / 6 done")
    expect(page.locator("#annotate-position input")).to_have_value("4")
    settled(page)
    html = page.content()
    page.screenshot(path=str(artifacts_dir(tmp_path) / "annotate_tab.png"), full_page=True)
    sid = ws.store.study("blind")["id"]
    mine = [r for r in ws.store.study_scores(sid) if r["annotator"] == "ann"]
    by_item: dict = {}
    for r in mine:
        by_item.setdefault(r["item_id"], {})[r["criterion"]] = r["score"]
    assert sorted(tuple(v[c] for c in ("customization", "fidelity", "quality")) for v in by_item.values()) == \
        sorted([(4, 5, 3), (2, 1, 0), (5, 5, 5)])
    for text in [html, *seen]:
        for m in MODELS:
            assert m not in text, f"{m} reached the annotator's browser: {text[:200]}"
    assert any("annotate" in s or "gradio_api" in s for s in seen)  # the replies were looked at


@pytest.mark.parametrize("endpoint, data", [("annotate_studies", []), ("annotate_item", ["blind", None]),
                                            ("annotate_save", ["blind", 1, {"quality": 3}, None]),
                                            ("study_results", ["blind"]), ("study_status", ["blind", "closed"])])
def test_visitor_without_login_gets_nothing(annotate_app, endpoint, data):
    import httpx

    ws, url = annotate_app
    before = ws.store.study("blind")
    r = httpx.post(f"{url}gradio_api/run/{endpoint}", json={"data": data}, timeout=30)
    assert r.status_code in (401, 403), r.text
    assert not any(m in r.text for m in MODELS) and "prompt" not in r.text
    assert ws.store.study("blind") == before  # nothing changed



def test_admin_sees_results_without_clicking_and_the_annotator_sees_the_active_scale(browser, annotate_app, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect
    from conftest import artifacts_dir, login

    ws, url = annotate_app
    samples = []
    for i in range(2):  # small generated images: the annotator sees them scaled to the box
        Image.new("RGB", (64, 64), (40 * i, 120, 200)).save(ws.root / f"generated/small{i}.png")
        samples.append({"model": MODELS[i], "prompt": f"a small one {i}", "image_path": f"generated/small{i}.png",
                        "face_path": "generated/face0.jpg"})
    he.create_study(ws, "fresh", samples, ["ann"], per_item=1, seed=0)
    he.set_status(ws, "fresh", "open")  # the newest open study: the one the admin sees first

    admin = login(browser, url, "ada")
    admin.get_by_role("tab", name="Annotate").click()
    results = admin.locator("#study-results")
    expect(results).to_contain_text("Study fresh (open)")
    expect(results).to_contain_text("Nothing is scored yet")
    for hidden in ("#study-table3", "#study-annotators-table", "#study-chart"):  # no "1 2 3" placeholders
        expect(admin.locator(hidden)).to_be_hidden()

    sid = ws.store.study("fresh")["id"]
    he.save(ws, sid, "ann", 1, {"customization": 4, "fidelity": 3, "quality": 5})
    he.save(ws, sid, "ann", 2, {"customization": 2})  # partly scored: not done for anyone
    assert ws.store.annotator_progress(sid, "ann")[0] == 1
    admin.get_by_role("tab", name="Runs").click()
    admin.get_by_role("tab", name="Annotate").click()  # back on the tab: results read again, no click on a row
    expect(results).to_contain_text("1 of 2 assignments done")
    expect(admin.locator("#study-table3")).to_be_visible()
    expect(admin.locator("#study-chart")).to_be_visible()
    assert "| model |" not in results.inner_text()  # Table 3 once, as the table below
    table = admin.locator("#study-annotators-table")
    expect(table).to_contain_text("partly")
    assert re.search(r"\bann\s+1\s+1\s", table.inner_text()), table.inner_text()  # items done 1, partly 1
    table3 = admin.locator("#study-table3").inner_text()
    assert "3.00" not in table3 and "4" in table3
    admin.screenshot(path=str(artifacts_dir(tmp_path) / "study_results.png"), full_page=True)

    page = login(browser, url, "ann")
    page.locator("#annotate-study input").click()
    page.get_by_role("option", name="fresh").click()
    expect(page.locator("#annotate-progress")).to_contain_text("1 / 2 done")
    img = page.locator("#annotate-image img")
    img.wait_for()
    page.wait_for_function("document.querySelector('#annotate-image img').complete")
    assert img.bounding_box()["width"] > 64 * 3  # scaled up into its 360 px box, not shown at 64 px
    active = page.locator(".scale-active")
    expect(active).to_have_count(1)
    assert active.evaluate("e => getComputedStyle(e).backgroundColor") not in ("rgba(0, 0, 0, 0)", "transparent")
    page.screenshot(path=str(artifacts_dir(tmp_path) / "annotate_small_image.png"), full_page=True)
