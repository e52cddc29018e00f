"""A real browser (Debian's chromium driven by playwright) uses the studio like a person."""
from __future__ import annotations

import shutil

import pytest
from conftest import artifacts_dir, login, settled

pytestmark = pytest.mark.browser


def test_admin_filters_by_person_and_opens_detail(browser, served, tmp_path):
    page = login(browser, served, "ada")
    page.get_by_text("9 images match").wait_for()
    person = page.get_by_label("Person")
    person.click()
    person.fill("obama")
    page.get_by_role("option", name="obama (5)").click()
    page.get_by_role("button", name="Apply filters").click()
    page.get_by_text("5 images match").wait_for()
    captions = page.locator("#browse-gallery .caption-label").all_inner_texts()
    assert len(captions) == 5 and all(" obama " in f" {c} " for c in captions), captions
    page.locator("#browse-gallery button.thumbnail-item").first.click()
    page.locator("#detail-text").get_by_text("obama").first.wait_for()
    page.locator("#detail-image img").wait_for()
    shot = artifacts_dir(tmp_path) / "browse_detail.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000


def test_bad_filter_shows_a_message(browser, served):
    page = login(browser, served, "ada")
    page.get_by_text("9 images match").wait_for()
    page.locator("#min-ratio textarea, #min-ratio input").first.fill("7")
    page.get_by_role("button", name="Apply filters").click()
    page.get_by_text("face ratio minimum must be between 0.0 and 1.0").first.wait_for()
    assert "Traceback" not in page.content()


def test_annotator_sees_only_annotation(browser, served, tmp_path):
    page = login(browser, served, "ann")
    page.get_by_text("annotator").first.wait_for()
    page.get_by_role("tab", name="Annotate").wait_for()
    assert page.get_by_role("tab", name="Browse").count() == 0
    assert page.get_by_role("tab", name="Statistics").count() == 0
    assert page.get_by_text("images match").count() == 0
    page.screenshot(path=str(artifacts_dir(tmp_path) / "annotator.png"), full_page=True)


def test_statistics_tab_shows_table1_and_plots(browser, served, tmp_path):
    page = login(browser, served, "ada")
    page.get_by_role("tab", name="Statistics").click()
    table = page.locator("#table1")
    table.get_by_text("Avg images / person").wait_for()
    text = " ".join(table.inner_text().split())
    assert "Images 9 4" in text and "Persons 5 3" in text, text
    page.get_by_text("Rejections by reason").first.wait_for()
    page.wait_for_function("document.querySelectorAll('.vega-embed svg').length >= 4")  # the plots have drawn
    for plot in ("plot-reasons", "plot-per-person-before", "plot-per-person-after", "plot-pose"):
        # bars, not just axes: every plot has data on this workspace
        page.wait_for_function(f"document.querySelectorAll('#{plot} .mark-rect path').length > 0")
    poses = page.locator("#plot-pose").inner_text()
    assert all(p in poses for p in ("frontal", "side", "looking up", "looking down"))  # what it lacks, shown
    page.screenshot(path=str(artifacts_dir(tmp_path) / "statistics.png"), full_page=True)


@pytest.fixture(scope="module")
def captioned_app(tmp_path_factory, photos, users_file, pack):
    import pandas as pd
    from conftest import running_app

    from studio.dataset.analyze import analyze
    from studio.dataset.ingest import ingest
    from studio.workspace import Workspace

    src = tmp_path_factory.mktemp("captioned_src")
    for name in ("obama", "astronaut"):
        shutil.copy(photos[name], src / photos[name].name)
    pd.DataFrame({"file_name": ["obama.jpg", "astronaut.png"], "person": ["obama", "eileen"],
                  "caption": ["1. **Hair:** short and grey", "A woman in an orange spacesuit smiles."]}
                 ).to_csv(src / "meta.csv", index=False)
    ws = Workspace.open(tmp_path_factory.mktemp("captioned_ws"))
    ingest(ws, src / "meta.csv")
    analyze(ws, pack=pack)  # face boxes: the queue's thumbnails are centred on them
    with running_app(ws.root, "--auth", str(users_file)) as url:
        yield url, ws


def test_review_names_the_photo_moves_on_by_itself_and_takes_keys(browser, captioned_app, tmp_path):
    from playwright.sync_api import expect

    url, ws = captioned_app
    ids = {r["person"]: r["id"] for r in ws.store.image_table()}
    page = login(browser, url, "ada")
    page.get_by_role("tab", name="Captions").click()
    page.get_by_label("Status", exact=True).click()
    page.get_by_role("option", name="imported").click()
    page.get_by_role("button", name="Load queue").click()
    page.get_by_text("2 captions in this queue").wait_for()
    thumbs = "#caption-queue button.thumbnail-item img"
    page.wait_for_function(f"[...document.querySelectorAll('{thumbs}')].every(e => e.complete && e.naturalWidth > 0)")
    sizes = page.locator(thumbs).evaluate_all("els => els.map(e => [e.naturalWidth, e.naturalHeight])")
    assert sizes[0][0] == sizes[0][1], sizes  # obama.jpg is 910 x 1137: its thumbnail is the square around the face
    face_src = _gallery_srcs(page, "#caption-queue")[0]  # a new file the app serves: to the admin only
    assert page.request.get(face_src).status == 200
    assert login(browser, url, "ann").request.get(face_src).status == 403
    stranger = browser.new_context()
    try:
        assert stranger.request.get(face_src).status in (401, 403)
    finally:
        stranger.close()
    page.locator("#caption-queue button.thumbnail-item").first.click()
    header = page.locator("#caption-current")
    expect(header).to_contain_text(f"#{ids['obama']} · obama · obama.jpg")
    expect(header).to_contain_text("1 of 2 in the queue")
    page.wait_for_function("document.querySelector('#caption-text textarea').value.includes('Hair')")
    assert page.locator("#caption-photo").bounding_box()["height"] < 560  # not a 2,700 px page
    page.locator("body").click(position={"x": 5, "y": 5})  # keys go to the page, not a field
    page.keyboard.press("n")
    expect(header).to_contain_text(f"#{ids['eileen']} · eileen")
    page.keyboard.press("a")  # approve: the queue is read again in place and the next waiting caption opens
    expect(page.locator("#caption-queue-summary")).to_contain_text("1 caption in this queue")
    expect(header).to_contain_text(f"#{ids['obama']} · obama")
    expect(header).to_contain_text("1 of 1 in the queue")
    page.keyboard.press("e")
    box = page.locator("#caption-text textarea")
    expect(box).to_be_focused()
    box.fill("A grey-haired man in a dark suit smiles.")
    box.press("Control+Enter")
    expect(header).to_contain_text("The queue is done")
    page.screenshot(path=str(artifacts_dir(tmp_path) / "caption_review.png"), full_page=True)
    hist = ws.store.caption_history(ids["obama"])
    assert [(h["status"], h["author"]) for h in hist] == [("imported", "import"), ("edited", "ada")]
    assert hist[-1]["text"] == "A grey-haired man in a dark suit smiles."
    assert [(h["status"], h["author"]) for h in ws.store.caption_history(ids["eileen"])] == \
        [("imported", "import"), ("approved", "ada")]


def _gallery_srcs(page, selector="#browse-gallery") -> list[str]:
    return page.locator(f"{selector} button.thumbnail-item img").evaluate_all("els => els.map(e => e.src)")


def test_photos_reach_the_admin_and_nobody_else(browser, served):
    page = login(browser, served, "ada")
    page.get_by_text("9 images match").wait_for()
    page.wait_for_function("document.querySelectorAll('#browse-gallery button.thumbnail-item img').length >= 9")
    src = _gallery_srcs(page)[0]
    assert "/gradio_api/file=" in src
    ok = page.request.get(src)
    assert ok.status == 200 and ok.headers["content-type"].startswith("image/")
    annotator = login(browser, served, "ann")
    assert annotator.request.get(src).status == 403
    stranger = browser.new_context()
    try:
        assert stranger.request.get(src).status in (401, 403)
    finally:
        stranger.close()


def test_thumbnails_are_whole_photos_and_a_mistake_keeps_the_gallery(browser, served, tmp_path):
    page = login(browser, served, "ada")
    page.get_by_text("9 images match").wait_for()
    page.wait_for_function("document.querySelectorAll('#browse-gallery button.thumbnail-item img').length >= 9")
    # the images are in the page before they are decoded: wait until every one has its natural size
    page.wait_for_function("[...document.querySelectorAll('#browse-gallery button.thumbnail-item img')]"
                           ".every(e => e.complete && e.naturalWidth > 0)")
    fits = page.locator("#browse-gallery button.thumbnail-item img").evaluate_all(
        "els => els.map(e => [getComputedStyle(e).objectFit, e.naturalWidth, e.naturalHeight])")
    assert {f[0] for f in fits} == {"contain"}
    assert any(w < h for _, w, h in fits)  # portrait photos stay portrait: nothing was cropped square
    before = _gallery_srcs(page)
    page.locator("#min-side textarea, #min-side input").first.fill("abc")
    page.get_by_role("button", name="Apply filters").click()
    page.get_by_text("shortest side minimum: 'abc' is not a number").first.wait_for()
    settled(page)
    assert _gallery_srcs(page) == before  # the photos stay on screen
    assert page.locator("#browse-gallery .error, #browse-summary .error").count() == 0
    page.locator("#min-side textarea, #min-side input").first.fill("")
    page.locator("#page input").first.fill("50")  # past the end: the last page
    page.locator("#page input").first.press("Enter")
    page.get_by_text("page 1 of 1").wait_for()
    page.screenshot(path=str(artifacts_dir(tmp_path) / "browse_thumbnails.png"), full_page=True)


def test_detail_is_readable_and_other_photos_open(browser, served):
    page = login(browser, served, "ada")
    page.get_by_text("9 images match").wait_for()
    page.locator("#browse-gallery button.thumbnail-item").filter(has_text="obama").first.click()
    text = page.locator("#detail-text")
    text.get_by_text("Reasons:").wait_for()
    first = text.inner_text()
    page.wait_for_function("document.querySelectorAll('#same-person button.thumbnail-item').length > 0")
    page.locator("#same-person button.thumbnail-item").first.click()
    page.wait_for_function(f"!document.querySelector('#detail-text').innerText.startsWith({first.splitlines()[0]!r})")
    assert page.locator("#detail-text").inner_text().splitlines()[0] != first.splitlines()[0]


def test_approve_with_nothing_selected_is_a_warning(browser, captioned_app):
    url, _ = captioned_app
    page = login(browser, url, "ada")
    page.get_by_role("tab", name="Captions").click()
    page.get_by_text("No API key is set on the server").wait_for()
    page.get_by_label("Status", exact=True).click()
    page.get_by_role("option", name="any").click()
    page.get_by_role("button", name="Load queue").click()
    page.get_by_text("2 captions in this queue").wait_for()
    page.locator("#caption-approve").click()
    page.get_by_text("pick a caption from the queue first").first.wait_for()
    settled(page)
    assert page.locator("#caption-queue button.thumbnail-item").count() == 2  # the queue stays


@pytest.fixture()
def runs_app(tmp_path, photos, users_file):
    """A workspace with six ingested photos (not analyzed), served with accounts."""
    from conftest import running_app

    from studio.dataset.ingest import ingest
    from studio.workspace import Workspace

    src = tmp_path / "src"
    for name in ("obama", "obama2", "obama3", "obama_partial_face", "biden", "astronaut"):
        (src / name).mkdir(parents=True)
        shutil.copy(photos[name], src / name / photos[name].name)
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, src)
    with running_app(ws.root, "--auth", str(users_file)) as url:
        yield url, ws


def _open_run(page, run_id: int) -> None:
    box = page.locator("#run-id input").first
    box.fill(str(run_id))
    box.press("Enter")
    page.locator("#run-summary").get_by_text(f"Run {run_id} ·").wait_for()


def _start_captioning(page, base_url: str, concurrency: int) -> None:
    """Fill the Captions tab's run form (key, endpoint, requests in flight, all images) and click Caption."""
    page.get_by_role("tab", name="Captions").click()
    page.locator("#api-key input, #api-key textarea").first.fill("sk-browser-key-0001")
    page.locator("#base-url input, #base-url textarea").first.fill(base_url)
    page.locator("#caption-concurrency input[type=number]").first.fill(str(concurrency))
    page.locator("#caption-concurrency input[type=number]").first.press("Tab")
    page.locator("#kept-only input").first.uncheck()
    page.get_by_role("button", name="Caption", exact=True).click()


def test_runs_outlive_the_page_and_cancelled_runs_resume(browser, runs_app, tmp_path):
    from collections import Counter

    from oai_server import LocalOpenAI, Reply, image_key

    url, ws = runs_app
    import threading

    release = threading.Event()

    def gated(n, body):
        """Two answers, then hold each request until the test has asked the run to stop and releases it.

        The hold is bounded under the client's 60 s timeout, so a slow machine never makes the client
        send the same image again (a retry would look like a resume that asks twice)."""
        if n > 2:
            release.wait(timeout=45)
        return Reply()

    with LocalOpenAI(gated) as server:
        page = login(browser, url, "ada")
        _start_captioning(page, server.url, concurrency=1)
        page.locator("#caption-run-summary").get_by_text("Caption run").wait_for()
        run = next(r for r in ws.store.runs() if r["kind"] == "caption")
        assert run["settings"]["concurrency"] == 1 and "sk-browser-key-0001" not in run["argv"] + [str(run["settings"])]
        page.get_by_role("tab", name="Runs").click()
        page.locator("#run-args textarea, #run-args input").first.fill("--face-pack bundled")
        page.get_by_role("button", name="Start run").click()
        page.locator("#run-summary").get_by_text("analyze").first.wait_for()
        page.close()  # the person closes the browser tab

        page = login(browser, url, "ada")
        page.get_by_role("tab", name="Runs").click()
        page.wait_for_function("(() => { const t = document.querySelector('#runs-table').innerText; "
                               "return t.includes('caption') && t.includes('analyze'); })()")
        caption_run = next(r for r in ws.store.runs() if r["kind"] == "caption")
        analyze_run = next(r for r in ws.store.runs() if r["kind"] == "analyze")
        assert caption_run["status"] in ("queued", "running")  # still going after the page closed
        _open_run(page, caption_run["id"])
        page.wait_for_function("document.querySelector('#run-log textarea').value.includes('caption')")
        page.get_by_role("button", name="Cancel run").click()
        page.get_by_text("will stop at its next item").first.wait_for()
        release.set()  # the request in flight is answered; the run stops after it
        page.locator("#run-summary").get_by_text("cancelled").wait_for()
        page.get_by_role("button", name="Rerun (resume)").click()
        page.locator("#run-summary").get_by_text(f"Resumes run {caption_run['id']}").wait_for()
        page.locator("#run-summary").get_by_text("no API key").wait_for()
        # the rerun has no key of its own: the server has none, so it fails clearly; the Captions tab resumes it
        _start_captioning(page, server.url, concurrency=4)
        page.locator("#caption-run-summary").get_by_text("done").wait_for()
        page.screenshot(path=str(artifacts_dir(tmp_path) / "runs.png"), full_page=True)
        asked = Counter(image_key(b) for b in server.requests)
    assert ws.store.run(analyze_run["id"])["status"] == "done"
    assert ws.store.run(caption_run["id"])["status"] == "cancelled"
    assert len(ws.store.current_captions()) == 6 and set(asked.values()) == {1}


def test_click_a_face_fast_mode_and_generate(browser, served_generate, photos, tmp_path):
    from playwright.sync_api import expect

    url, ws = served_generate
    page = login(browser, url, "ada")
    page.get_by_role("tab", name="Generate").click()
    page.locator("#weights-status").get_by_text("tiny (face pack bundled): ready").wait_for()
    page.locator("#gen-reference input[type=file]").set_input_files(str(photos["t1"]))
    page.get_by_text("6 faces found; using face 0 (the largest)").wait_for()
    face_index = page.locator("#face-index textarea, #face-index input").first
    assert face_index.input_value() == "0"
    page.locator("#faces-found").get_by_role("button", name="face 2").click()
    page.wait_for_function("() => document.querySelector('#face-index textarea, #face-index input').value === '2'")
    # fast mode sets the demo's LCM settings; switching it off restores the defaults
    page.get_by_role("button", name="Advanced").click()
    page.locator("#gen-steps input[type=number]").first.wait_for()
    page.locator("#fast-mode input").check()
    steps = page.locator("#gen-steps input[type=number]").first
    page.wait_for_function("() => document.querySelector('#gen-steps input[type=number]').value === '5'")
    assert page.locator("#gen-scheduler input").first.input_value() == "LCM"
    page.locator("#fast-mode input").uncheck()
    page.wait_for_function("() => document.querySelector('#gen-steps input[type=number]').value === '30'")
    steps.fill("2")
    steps.press("Tab")
    page.locator("#long-side input[type=number]").first.fill("128")
    page.locator("#long-side input[type=number]").first.press("Tab")
    # the first model with all its weights is ticked when the tab opens; InstantID's are missing here, so it
    # is not offered, and its download commands are code (a copy keeps 'scheduler/*'), collapsed under its name
    assert page.locator("#models").get_by_label("tiny", exact=True).is_checked()
    assert page.locator("#models").get_by_label("InstantID", exact=True).count() == 0
    status = page.locator("#weights-status")
    code = status.locator("code", has_text="scheduler/*").first
    expect(code).to_be_hidden()  # collapsed
    status.locator("summary", has_text="InstantID").first.click()
    expect(code).to_be_visible()
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0 --include 'model_index.json' 'scheduler/*'" in \
        code.inner_text()
    page.locator("#gen-prompt textarea").fill("a person smiling")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#generate-note").get_by_text("using face #2").wait_for()
    page.locator("#generated img").first.wait_for()
    rows = [g for g in ws.store.generations() if g["settings"].get("steps") == 2 and g["author"] == "ada"
            and g["face"].get("faces_found") == 6]
    assert rows and rows[-1]["settings"]["scheduler"] == "Euler" and rows[-1]["settings"]["long_side"] == 128
    page.screenshot(path=str(artifacts_dir(tmp_path) / "generate_faces.png"), full_page=True)


def test_an_ip_adapter_faceid_model_side_by_side_with_instantid(browser, served_generate, photos, tmp_path):
    """The Generate tab with the paper's second family: its model hides the IdentityNet controls (it has no
    IdentityNet and no keypoints) until an InstantID model is chosen beside it; both get the same face,
    prompt and seed."""
    from playwright.sync_api import expect

    url, ws = served_generate
    page = login(browser, url, "ada")
    page.get_by_role("tab", name="Generate").click()
    page.locator("#weights-status").get_by_text("tiny-faceid").first.wait_for()
    page.locator("#gen-reference input[type=file]").set_input_files(str(photos["obama"]))
    page.locator("#gen-reference img").first.wait_for()  # uploaded (one face: nothing to choose)
    page.get_by_role("button", name="Advanced").click()
    strength = page.locator("#identitynet-strength")
    expect(strength).to_be_visible()
    page.locator("#models").get_by_label("tiny", exact=True).uncheck()
    page.locator("#models").get_by_label("tiny-faceid", exact=True).check()
    expect(strength).to_be_hidden()  # FaceID alone: nothing of the IdentityNet is offered
    page.locator("#models").get_by_label("tiny", exact=True).check()
    expect(strength).to_be_visible()
    page.locator("#gen-steps input[type=number]").first.fill("2")
    page.locator("#gen-steps input[type=number]").first.press("Tab")
    page.locator("#long-side input[type=number]").first.fill("128")
    page.locator("#long-side input[type=number]").first.press("Tab")
    page.get_by_label("λ sweep").check()
    page.get_by_label("λ values").fill("0.4, 0.8")
    before = len(ws.store.generations())
    page.locator("#gen-prompt textarea").fill("a man wearing a hat")
    page.get_by_role("button", name="Generate", exact=True).click()
    # a models x λ grid: each model's row starts with the reference face, then its λ values in order
    expect(page.locator("#generated img")).to_have_count(6, timeout=120_000)
    labels = page.locator("#generated .caption-label").all_inner_texts()
    rows = sorted(labels[k:k + 3] for k in (0, 3))  # the rows follow the order the models were ticked in
    assert rows == [["reference face", "tiny · λ=0.4", "tiny · λ=0.8"],
                    ["reference face", "tiny-faceid · λ=0.4", "tiny-faceid · λ=0.8"]], labels
    grid = page.locator("#generated .grid-container").first.evaluate("e => getComputedStyle(e).gridTemplateColumns")
    assert len(grid.split()) == 3, grid  # three columns: the rows do not wrap into each other
    fits = page.locator("#generated img").evaluate_all("els => els.map(e => getComputedStyle(e).objectFit)")
    assert set(fits) == {"contain"}  # non-square outputs whole, not cropped
    page.locator("#generated").screenshot(path=str(artifacts_dir(tmp_path) / "generate_sweep.png"))
    made = ws.store.generations()[before:]
    assert sorted((g["model"], g["model_spec"].get("family", "InstantID"), g["settings"]["ip_scale"]) for g in made) == [
        ("tiny", "InstantID", 0.4), ("tiny", "InstantID", 0.8),
        ("tiny-faceid", "IP-Adapter-FaceID", 0.4), ("tiny-faceid", "IP-Adapter-FaceID", 0.8)]
    assert len({g["settings"]["seed"] for g in made}) == 1 and {g["settings"]["prompt"] for g in made} == {
        "a man wearing a hat"}
