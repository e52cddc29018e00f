"""The Generate tab in a real browser: pick one of several faces by clicking it, fast mode, generate."""
from __future__ import annotations

import pytest
from test_browser import CHROMIUM, artifacts_dir, browser, login  # noqa: F401  (browser is a fixture)
from test_generate import served_generate  # noqa: F401  (a fixture: tiny models registered, app served)

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists()
                                and not __import__("os").environ.get("CI"),
                                reason="Debian chromium not installed (.ci/run installs it)")


def test_click_a_face_fast_mode_and_generate(browser, served_generate, photos, tmp_path):  # noqa: F811
    url, ws = served_generate
    page = login(browser, url, "ada")
    page.get_by_role("tab", name="Generate").click()
    page.locator("#weights-status").get_by_text("tiny (face pack bundled): ready").wait_for(timeout=30_000)
    page.locator("#gen-reference input[type=file]").set_input_files(str(photos["t1"]))
    page.get_by_text("6 faces found; using face 0 (the largest)").wait_for(timeout=60_000)
    face_index = page.locator("#face-index textarea, #face-index input").first
    assert face_index.input_value() == "0"
    page.locator("#faces-found").get_by_role("button", name="face 2").click()
    page.wait_for_function("() => document.querySelector('#face-index textarea, #face-index input').value === '2'",
                           timeout=30_000)
    # fast mode sets the demo's LCM settings; switching it off restores the defaults
    page.get_by_role("button", name="Advanced").click()
    page.locator("#gen-steps input[type=number]").first.wait_for(timeout=30_000)
    page.locator("#fast-mode input").check()
    steps = page.locator("#gen-steps input[type=number]").first
    page.wait_for_function("() => document.querySelector('#gen-steps input[type=number]').value === '5'",
                           timeout=30_000)
    assert page.locator("#gen-scheduler input").first.input_value() == "LCM"
    page.locator("#fast-mode input").uncheck()
    page.wait_for_function("() => document.querySelector('#gen-steps input[type=number]').value === '30'",
                           timeout=30_000)
    steps.fill("2")
    steps.press("Tab")
    page.locator("#long-side input[type=number]").first.fill("128")
    page.locator("#long-side input[type=number]").first.press("Tab")
    # the first model with all its weights is ticked when the tab opens (InstantID's are missing here)
    assert page.locator("#models").get_by_label("tiny", exact=True).is_checked()
    assert not page.locator("#models").get_by_label("InstantID", exact=True).is_checked()
    page.locator("#gen-prompt textarea").fill("a person smiling")
    page.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#generate-note").get_by_text("using face #2").wait_for(timeout=120_000)
    page.locator("#generated img").first.wait_for(timeout=30_000)
    rows = [g for g in ws.store.generations() if g["settings"].get("steps") == 2 and g["author"] == "ada"
            and g["face"].get("faces_found") == 6]
    assert rows and rows[-1]["settings"]["scheduler"] == "Euler" and rows[-1]["settings"]["long_side"] == 128
    page.screenshot(path=str(artifacts_dir(tmp_path) / "generate_faces.png"), full_page=True)
