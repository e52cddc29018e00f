"""The Training tab's API as a browser-less client drives it: start, follow the loss, stop, finish, refuse."""
from __future__ import annotations

import shlex

import pytest
from conftest import USERS, copy_ws, running_app, wait_for, wait_run
from gradio_client import Client
from gradio_client.exceptions import AppError

pytestmark = pytest.mark.slow  # a served app that trains

TINY = {"model": "tiny", "devices": "cpu", "precision": "no", "batch_size": 2, "resolution": 64,
        "missing_caption": "template", "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def train_app(pairs_ws_template, tmp_path_factory, tiny_spec, users_file):
    from studio.models.generate import register_model
    from studio.train.pairs import assign_splits, make_pairs

    ws = copy_ws(pairs_ws_template, tmp_path_factory.mktemp("train_ui") / "ws")
    assign_splits(ws, pins={"obama": "train", "eileen_collins": "train", "biden": "test"})
    make_pairs(ws)
    register_model(ws, tiny_spec)
    ws.store.close()
    with running_app(ws.root, "--auth", str(users_file)) as url:
        yield ws, url


def client(url, who="ada"):
    return Client(url, auth=(who, USERS[who][1]), verbose=False)


def wait_losses(c, run_id: int, n: int, timeout: float = 300) -> dict:
    """The run's status once it logged ``n`` losses (or ended)."""
    def status():
        s = c.predict(run_id=run_id, api_name="/train_status")
        return s if len(s["losses"]) >= n or s["status"] in ("done", "failed", "cancelled") else None

    return wait_for(status, f"{n} losses of run {run_id}", timeout=timeout, interval=0.5)


def test_start_follow_stop_and_finish(train_app):
    ws, url = train_app
    c = client(url)
    assert c.predict(api_name="/gpus") == []  # no GPU on this machine; the tab says so
    long = c.predict(config={**TINY, "name": "ui-long", "max_steps": 5000, "checkpoint_every": 100000},
                     api_name="/train_start")
    s = wait_losses(c, long, 3)
    assert s["status"] == "running" and all(loss > 0 for _, loss in s["losses"])
    steps = [step for step, _ in s["losses"]]
    assert steps == sorted(steps) and steps[0] == 1
    # one run per device set: a second start while the first trains is refused, naming it
    with pytest.raises(AppError, match=f"training run {long} .*is using cpu"):
        c.predict(config={**TINY, "name": "ui-second", "max_steps": 2}, api_name="/train_start")
    assert c.predict(run_id=long, api_name="/run_cancel") is True
    stopped = wait_run(c, long, timeout=180)
    assert stopped["status"] == "cancelled"
    out = ws.root / "training" / "ui-long"
    assert list(out.glob("checkpoint-*")), "Stop saves a checkpoint before exiting"
    assert not (out / "ip-adapter.bin").exists()  # not finished: not a model
    assert "ui-long" not in c.predict(api_name="/models")
    # Rerun (the Runs tab's button) goes on from the checkpoint the stop saved
    last_step = max(step for step, _ in c.predict(run_id=long, api_name="/train_status")["losses"])
    again = c.predict(run_id=long, api_name="/run_rerun")
    def resumed():
        s = c.predict(run_id=again, api_name="/train_status")
        assert s["status"] in ("queued", "running"), s
        return s if "resuming from" in s["log"] and max((step for step, _ in s["losses"]), default=0) > last_step else None

    s = wait_for(resumed, f"run {again} to resume past step {last_step}", interval=0.5)
    assert f"checkpoint-{last_step}" in s["log"]
    assert c.predict(run_id=again, api_name="/run_cancel") is True
    assert wait_run(c, again, timeout=180)["status"] == "cancelled"
    done = c.predict(config={**TINY, "name": "ui-short", "max_steps": 3, "validation_every": 3,
                             "extra": ["--validation_inference_steps", "2", "--num_validation_images", "1"]},
                     api_name="/train_start")
    final = wait_run(c, done, timeout=240)
    assert final["status"] == "done", final
    status = c.predict(run_id=done, api_name="/train_status")
    assert [step for step, _ in status["losses"]] == [1, 2, 3] and len(status["validation"]) == 1
    assert c.predict(api_name="/models")["ui-short"] == []  # listed, nothing missing: the Generate tab offers it
    with pytest.raises(AppError, match="exists already"):
        c.predict(config={**TINY, "name": "ui-short", "max_steps": 2}, api_name="/train_start")
    before = len(ws.store.runs(kind="train"))
    with pytest.raises(AppError, match="starting model 'InstantID' is missing weights"):  # no hub here
        c.predict(config={**TINY, "model": "InstantID", "name": "real", "max_steps": 2}, api_name="/train_start")
    assert len(ws.store.runs(kind="train")) == before  # refused before any run was made
    with pytest.raises(AppError, match="unknown training settings"):
        c.predict(config={"name": "x", "rm -rf": 1}, api_name="/train_start")
    with pytest.raises(AppError, match="max_steps must be"):
        c.predict(config={**TINY, "name": "bad", "max_steps": 0}, api_name="/train_start")


@pytest.mark.parametrize("extra, message", [
    (["--output_dir", "ELSEWHERE"], "--output_dir is set by the studio"),
    (["--output_dir=ELSEWHERE"], "--output_dir is set by the studio"),
    (["--output_d", "ELSEWHERE"], "--output_dir is set by the studio"),  # an abbreviation argparse would take
    (["--pretrained_model_name_or_path=ELSEWHERE"], "--pretrained_model_name_or_path is set by the studio"),
    ("--output_dir ELSEWHERE", "must be a list of strings"),  # a string is not split into characters
    (["--lr_warmup_steps", "x"], "invalid int value"),
    (["--no-such-option"], "unrecognized arguments"),
])
def test_extra_script_options_cannot_set_the_studios_own(train_app, tmp_path, extra, message):
    """Through the API and through the form's own parsing: nothing is started, nothing written elsewhere."""
    from studio.ui.training import config_from_form

    ws, url = train_app
    elsewhere = tmp_path / "elsewhere"
    extra = [a.replace("ELSEWHERE", str(elsewhere)) for a in extra] if isinstance(extra, list) else \
        extra.replace("ELSEWHERE", str(elsewhere))
    before = len(ws.store.runs())
    with pytest.raises(AppError, match=message):
        client(url).predict(config={**TINY, "name": "smuggle", "max_steps": 1, "extra": extra}, api_name="/train_start")
    if isinstance(extra, list):  # the form takes one line of text
        with pytest.raises(AppError, match=message):
            client(url).predict(kind="train", args=" ".join(["--name", "smuggle2", "--devices", "cpu", "--", *extra]),
                                api_name="/run_start")
        form = {**TINY, "name": "smuggle3", "max_steps": 1, "checkpoint_every": 500, "validation_every": 0,
                "extra": shlex.join(extra)}
        with pytest.raises(ValueError, match=message):
            config_from_form(form)
    assert len(ws.store.runs()) == before and not elsewhere.exists()


def test_annotator_cannot_train(train_app):
    ws, url = train_app
    c = client(url, "ann")
    before = len(ws.store.runs(kind="train"))
    for api, kwargs in (("/gpus", {}), ("/train_status", {"run_id": 1}),
                        ("/train_start", {"config": {**TINY, "name": "sneaky", "max_steps": 1}})):
        with pytest.raises(AppError, match="Access denied: this needs the admin role"):
            c.predict(**kwargs, api_name=api)
    assert len(ws.store.runs(kind="train")) == before


@pytest.mark.browser
def test_browser_starts_a_run_sees_the_loss_and_stops_it(browser, train_app, tmp_path):
    """A real browser: fill the Training form, start, watch the loss plot draw, stop."""
    from conftest import artifacts_dir, login

    from playwright.sync_api import expect

    ws, url = train_app
    page = login(browser, url, "ada")
    page.get_by_role("tab", name="Training").click()
    page.locator("#train-gpus").get_by_text("none found").wait_for()
    # no GPU here: the form is set for the CPU, and says only tiny models are practical
    expect(page.locator("#train-gpus")).to_contain_text("Only tiny models are practical")
    expect(page.locator("#train-devices input, #train-devices textarea").first).to_have_value("cpu")
    expect(page.locator("#train-res input[type=number]").first).to_have_value("256")
    assert page.locator("#train-precision").get_by_label("no", exact=True).is_checked()
    page.get_by_role("button", name="Make pairs").click()  # a pairs run; its summary arrives when it ends
    page.locator("#train-data").get_by_text("Last pairing (run").wait_for()
    page.locator("#train-data").get_by_text("eileen_collins (one_usable_image)").wait_for()
    fill_run(page, "ui-browser", steps=5000, resolution=64)
    page.locator("#train-devices input, #train-devices textarea").first.fill("cpu")
    page.locator("#train-precision").get_by_label("no", exact=True).check()
    page.locator("#train-missing").get_by_label("template", exact=True).check()
    extra = page.locator("#train-extra input, #train-extra textarea").first
    extra.fill(f"--output_dir={tmp_path / 'elsewhere'}")  # refused with a warning; the form stays filled
    page.locator("#train-start").click()
    page.get_by_text("--output_dir is set by the studio; leave it out").first.wait_for()
    assert not (tmp_path / "elsewhere").exists()
    assert page.locator("#train-name input, #train-name textarea").first.input_value() == "ui-browser"
    extra.fill("")
    page.locator("#train-start").click()
    status = page.locator("#train-status")
    status.get_by_text("Last loss").wait_for()
    # the loss plot has drawn marks
    page.locator("#train-loss canvas, #train-loss svg").first.wait_for()
    page.screenshot(path=str(artifacts_dir(tmp_path) / "training_tab.png"), full_page=True)
    run = ws.store.runs(kind="train")[0]
    expect(status).to_contain_text("steps/s")  # the pace of the running run, beside its last loss
    # a page opened (or reloaded) while the run goes on follows it
    other = login(browser, url, "ada")
    other.get_by_role("tab", name="Training").click()
    expect(other.locator("#train-run input").first).to_have_value(str(run["id"]))
    expect(other.locator("#train-status")).to_contain_text("Last loss")  # and its clock follows that run
    other.close()
    page.locator("#train-stop").click()
    status.get_by_text("cancelled").wait_for()
    run = ws.store.runs(kind="train")[0]
    assert run["settings"]["name"] == "ui-browser" and run["status"] == "cancelled"
    assert run["settings"]["resolution"] == 64 and run["settings"]["devices"] == "cpu"


@pytest.mark.browser
def test_browser_stop_ends_a_run_within_seconds_even_mid_step(browser, train_app):
    """A step of minutes (512 px with the tiny models on this CPU): Stop ends the run within the grace period, not after the
    step; the training processes are gone."""
    import re
    import time

    from playwright.sync_api import expect

    ws, url = train_app
    page = login_training(browser, url)
    fill_run(page, "ui-midstep", steps=3, resolution=512)
    page.locator("#train-missing").get_by_label("template", exact=True).check()
    page.locator("#train-start").click()
    expect(page.locator("#train-log textarea")).to_have_value(re.compile(r"on 1 process\(es\)"))  # stepping now
    clicked = time.monotonic()
    page.locator("#train-stop").click()
    expect(page.locator("#train-status")).to_contain_text("cancelled", timeout=45_000)  # a step takes longer
    assert time.monotonic() - clicked < 45
    run = ws.store.runs(kind="train")[0]
    assert run["settings"]["name"] == "ui-midstep" and run["status"] == "cancelled"
    import subprocess

    left = subprocess.run(["pgrep", "-f", "ui-midstep"], capture_output=True, text=True).stdout.split()
    assert left == []  # no training process left behind


def fill_run(page, name: str, steps: int, resolution: int) -> None:
    """The Training form's name, the tiny model, steps and resolution, typed as a person does."""
    page.locator("#train-name input, #train-name textarea").first.fill(name)
    page.locator("#train-model input").first.click()
    page.get_by_role("option", name="tiny", exact=True).click()
    for elem, value in (("#train-steps", steps), ("#train-res", resolution)):
        box = page.locator(f"{elem} input[type=number]").first
        box.fill(str(value))
        box.press("Tab")


def login_training(browser, url):
    from conftest import login

    page = login(browser, url, "ada")
    page.get_by_role("tab", name="Training").click()
    page.locator("#train-gpus").get_by_text("none found").wait_for()
    return page


@pytest.mark.parametrize("endpoint, data", [("gpus", []), ("train_status", [1]),
                                            ("train_start", [{**TINY, "name": "visitor", "max_steps": 1}])])
def test_visitor_without_login_cannot_call_training_endpoints(train_app, endpoint, data):
    import httpx

    ws, url = train_app
    before = len(ws.store.runs())
    r = httpx.post(f"{url}gradio_api/call/{endpoint}", json={"data": data}, timeout=30)
    assert r.status_code in (401, 403), r.text
    assert len(ws.store.runs()) == before
