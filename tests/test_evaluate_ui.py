"""The Evaluate tab: its API driven by a client (start, follow, table, refusals) and a real browser that
builds a test set and runs an evaluation from the form."""
from __future__ import annotations

import re

import pytest
from conftest import USERS, copy_ws, running_app, wait_run
from gradio_client import Client
from gradio_client.exceptions import AppError

pytestmark = pytest.mark.slow  # a served app that generates and scores


@pytest.fixture(scope="module")
def eval_app(pairs_ws_template, tmp_path_factory, tiny_spec, tiny_clip_dir, users_file):
    import torch

    from studio.models.generate import register_model
    from studio.models import ModelSpec
    from studio.train.pairs import assign_splits
    from studio.evaluation.testsets import build_testset

    root = tmp_path_factory.mktemp("eval_ui")
    ws = copy_ws(pairs_ws_template, root / "ws")
    assign_splits(ws, pins={"obama": "train", "eileen_collins": "train", "biden": "test"})
    register_model(ws, tiny_spec)
    state = torch.load(tiny_spec.ip_adapter, weights_only=True)
    torch.save({part: {k: v * 3 for k, v in d.items()} for part, d in state.items()}, root / "b.bin")
    register_model(ws, ModelSpec("tiny-b", base=tiny_spec.base, identitynet=tiny_spec.identitynet,
                                 ip_adapter=str(root / "b.bin"), face_pack="bundled"))
    build_testset(ws, "smiles", "customization", persons=["obama"], ask=["smiling"], per_person=2)
    ws.store.close()
    with running_app(ws.root, "--auth", str(users_file)) as url:
        yield ws, url, tiny_clip_dir


def client(url, who="ada"):
    return Client(url, auth=(who, USERS[who][1]), verbose=False)


def config(clip_dir, **kw) -> dict:
    return {"testsets": ["smiles"], "models": ["tiny", "tiny-b"], "lambdas": [0.5, 1.0], "steps": 2, "width": 64,
            "height": 64, "clip_model": str(clip_dir), "clip_pretrained": None, "n_boot": 100, "device": "cpu", **kw}


def test_start_an_evaluation_and_read_its_table(eval_app):
    ws, url, clip_dir = eval_app
    c = client(url)
    sets = c.predict(api_name="/testsets")
    assert [(s["name"], s["items"], s["kind"]) for s in sets] == [("smiles", 2, "customization")]
    run = c.predict(config=config(clip_dir), api_name="/eval_start")
    assert wait_run(c, run, timeout=300)["status"] == "done"
    s = c.predict(run_id=run, api_name="/eval_status")
    res = s["result"]
    assert res["samples"] == 8 and res["generated"] == 8 and len(res["table"]) == 4
    assert {r["model"] for r in res["table"]} == {"tiny", "tiny-b"} and res["baseline"] == "tiny"
    assert all((ws.root / f).is_file() for f in res["files"].values())
    with pytest.raises(AppError, match="no test set named"):
        c.predict(config=config(clip_dir, testsets=["nope"]), api_name="/eval_start")
    with pytest.raises(AppError, match="unknown evaluation settings"):
        c.predict(config={**config(clip_dir), "shell": "rm -rf /"}, api_name="/eval_start")
    with pytest.raises(AppError, match="missing weights"):
        c.predict(config=config(clip_dir, models=["CrossFaceID"]), api_name="/eval_start")


def test_annotator_and_visitor_are_refused(eval_app):
    import httpx

    ws, url, clip_dir = eval_app
    c = client(url, "ann")
    before = len(ws.store.runs())
    for api, kwargs in (("/testsets", {}), ("/eval_status", {"run_id": 1}),
                        ("/eval_start", {"config": config(clip_dir)})):
        with pytest.raises(AppError, match="Access denied: this needs the admin role"):
            c.predict(**kwargs, api_name=api)
    for endpoint, data in (("testsets", []), ("eval_start", [config(clip_dir)])):
        r = httpx.post(f"{url}gradio_api/call/{endpoint}", json={"data": data}, timeout=30)
        assert r.status_code in (401, 403), r.text
    assert len(ws.store.runs()) == before


@pytest.mark.browser
def test_browser_builds_a_test_set_and_evaluates_it(browser, eval_app, tmp_path):
    from conftest import artifacts_dir, login

    ws, url, clip_dir = eval_app

    def fill(page, elem, value):
        box = page.locator(f"{elem} input, {elem} textarea").first
        box.fill(value)
        box.press("Tab")

    page = login(browser, url, "ada")
    page.get_by_role("tab", name="Evaluate").click()
    fill(page, "#ts-name", "ui-fid")
    fill(page, "#ts-persons", "biden")
    page.locator("#ts-kind").get_by_label("fidelity", exact=True).check()
    page.locator("#ts-build").click()
    page.locator("#ts-list").get_by_text("ui-fid").wait_for()
    page.locator("#ev-sets").get_by_label("ui-fid", exact=True).check()
    page.locator("#ev-models").get_by_label("tiny", exact=True).check()
    page.locator("#ev-models").get_by_label("tiny-b", exact=True).check()
    for elem, value in (("#ev-steps", "2"), ("#ev-width", "64"), ("#ev-height", "64"), ("#ev-lambdas", "0.8"),
                        ("#ev-device", "cpu")):
        fill(page, elem, value)
    before = len(ws.store.runs(kind="evaluate"))
    page.locator("#ev-start").click()  # the default CLIP (ViT-L-14) is not on this machine: refused at start
    from playwright.sync_api import expect

    expect(page.get_by_text("ViT-L-14/openai could not be loaded").first).to_be_visible()
    assert len(ws.store.runs(kind="evaluate")) == before  # no run to discover failed later
    for elem, value in (("#ev-clip", str(clip_dir)), ("#ev-clip-pretrained", "")):
        fill(page, elem, value)
    page.locator("#ev-start").click()
    page.locator("#ev-status").get_by_text("done").wait_for()
    expect(page.locator("#ev-table")).to_contain_text("tiny-b")
    # the paper's compact Table 2 fits a 1,280 px screen; the studio's own measures are one click away
    page.set_viewport_size({"width": 1280, "height": 1400})
    heads = page.locator("#ev-table thead th")
    assert "ui-fid Face Sim" in " ".join(heads.all_inner_texts())
    page.wait_for_function("() => [...document.querySelectorAll('#ev-table thead th')]"
                           ".every(th => th.getBoundingClientRect().right <= 1280)")
    expect(page.locator("#ev-details")).to_be_hidden()
    page.locator("#ev-details-box").get_by_text("The studio's own measures").click()
    expect(page.locator("#ev-details")).to_contain_text("(baseline)")
    page.screenshot(path=str(artifacts_dir(tmp_path) / "evaluate_tab.png"), full_page=True)

    import re

    expect(page.locator("#ev-files")).to_contain_text(re.compile(r"table\s*\.md"))
    expect(page.locator("#ev-files")).to_contain_text(re.compile(r"samples\s*\.csv"))
    run = ws.store.runs(kind="evaluate")[0]
    assert run["status"] == "done" and run["settings"]["testsets"] == ["ui-fid"]
    assert run["settings"]["models"] == ["tiny", "tiny-b"] and run["result"]["samples"] == 4  # 2 photos x 2 models


@pytest.mark.browser
def test_browser_imports_a_zip_of_text_image_pairs(browser, eval_app, photos, tmp_path):
    from conftest import login
    from playwright.sync_api import expect
    from test_evaluate import _pairs_folder, _zip

    ws, url, _ = eval_app
    cross, _ = _pairs_folder(tmp_path, photos)
    page = login(browser, url, "ada")
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#ts-import").click()  # nothing chosen: a warning, nothing submitted
    expect(page.get_by_text("choose a zip of text-image pairs to import")).to_be_visible()
    page.locator("#ts-zip input[type=file]").set_input_files(str(_zip(cross, tmp_path / "cross.zip")))
    box = page.locator("#ts-import-name input, #ts-import-name textarea").first
    box.fill("uploaded")
    box.press("Tab")
    page.locator("#ts-import").click()
    expect(page.locator("#ts-list")).to_contain_text("uploaded", timeout=120_000)
    t = ws.store.testset("uploaded")
    assert t["kind"] == "customization" and t["source"].startswith("import:")
    (item,) = ws.store.testset_items(t["id"])
    assert item["person"] == "obama" and item["target_path"] and item["attribute"] == "smiling"
    run = ws.store.runs(kind="testset")[0]
    assert run["author"] == "ada" and run["settings"]["file"].startswith(str(ws.root / "imports"))


@pytest.mark.browser
def test_browser_designs_a_study_from_faces_x_prompts_x_models(browser, eval_app):
    from conftest import login
    from playwright.sync_api import expect

    ws, url, _ = eval_app
    page = login(browser, url, "ada")
    page.get_by_role("tab", name="Annotate").click()
    page.locator("#design").get_by_text("Design a study").click()
    prompts = page.locator("#design-prompts textarea")
    expect(prompts).to_have_value(re.compile("smiling"))  # the example list is there to start from
    page.locator("#design-start").click()  # no name yet: a warning, the form kept
    expect(page.get_by_text("give the study a name")).to_be_visible()
    expect(prompts).to_have_value(re.compile("smiling"))
    for elem, value in (("#design-name", "ui-study"), ("#design-annotators", "ann,bob"), ("#design-steps", "2"),
                        ("#design-width", "64"), ("#design-height", "64"), ("#design-device", "cpu")):
        box = page.locator(f"{elem} input, {elem} textarea").first
        box.fill(value)
        box.press("Tab")
    prompts.fill("a photo of a person laughing\na photo of a person wearing a hat")
    prompts.press("Tab")
    page.locator("#design-faces input").click()
    page.get_by_role("option", name="smiles").click()
    page.locator("#design-models").get_by_label("tiny", exact=True).check()
    page.locator("#design-models").get_by_label("tiny-b", exact=True).check()
    page.locator("#design-start").click()
    expect(page.get_by_text("Generating the study as run")).to_be_visible()
    run = next(r for r in ws.store.runs(kind="study"))
    assert run["author"] == "ada" and run["settings"]["prompts"] == ["a photo of a person laughing",
                                                                     "a photo of a person wearing a hat"]
    c = client(url)
    assert wait_run(c, run["id"], timeout=300)["status"] == "done"
    study = ws.store.study("ui-study")
    faces = len({i["input_path"] for i in ws.store.testset_items(ws.store.testset("smiles")["id"])})
    assert study["items"] == faces * 2 * 2 and study["per_item"] == 2  # faces x prompts x models; both annotators
