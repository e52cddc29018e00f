"""What the pages say and show, checked on the functions the tabs call (the browser tests drive the same)."""
from __future__ import annotations

import shutil

import pytest
from PIL import Image

from studio.auth import AccessPolicy
from studio.dataset.browse import BrowseFilter, BrowsePage, browse
from studio.dataset.ingest import ingest
from studio.ui.access import StudioContext
from studio.workspace import Workspace


@pytest.fixture()
def ctx(tmp_path, photos):
    src = tmp_path / "src"
    for name in ("biden", "obama"):  # biden.jpg is a tall portrait (970 x 2204)
        (src / name).mkdir(parents=True)
        shutil.copy(photos[name], src / name / photos[name].name)
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, src)
    return StudioContext(ws, AccessPolicy("none"))


def test_thumbnails_show_the_whole_photo_outside_the_workspace(ctx):
    row = next(r for r in ctx.ws.store.image_table() if r["person"] == "biden")
    thumb = ctx.media.thumbnail(row["media_path"])
    img = Image.open(thumb)
    assert max(img.size) == 320 and abs(img.width / img.height - row["width"] / row["height"]) < 0.01  # not cropped
    assert not thumb.startswith(str(ctx.ws.root))  # pages never get a workspace path
    served = ctx.media.file(row["media_path"])
    assert not served.startswith(str(ctx.ws.root)) and open(served, "rb").read() == ctx.ws.media_path(row["media_path"]).read_bytes()


def test_summary_counts_read_naturally():
    assert BrowsePage([], 1, 1, 1).summary == "1 image matches · page 1 of 1"
    assert BrowsePage([], 2, 1, 1).summary == "2 images match · page 1 of 1"


def test_browse_page_past_the_end_is_the_last_page(ctx):
    page = browse(ctx.ws, BrowseFilter(), page=7, page_size=1)
    assert (page.page, page.pages, len(page.items)) == (2, 2, 1)


def test_captions_tab_says_what_is_missing_before_a_click(ctx, monkeypatch):
    from studio.ui.captions import readiness

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    text = readiness(ctx)
    assert "No API key is set on the server" in text and "Nothing is captioned yet" in text
    monkeypatch.setenv("OPENAI_API_KEY", "sk-set")
    ctx.ws.store.add_caption(1, "A man.", status="generated", origin="model", author="m")
    text = readiness(ctx)
    assert "API key" not in text and "1 image captioned (generated 1)" in text


def test_captions_tab_shows_the_last_runs_cost_and_flags(ctx, monkeypatch):
    from oai_server import LocalOpenAI

    from studio.captions.captioner import CaptionSettings, caption_workspace
    from studio.codes import RunStatus
    from studio.runs.jobs import describe
    from studio.ui.captions import readiness

    monkeypatch.setenv("OPENAI_API_KEY", "sk-set")
    with LocalOpenAI() as server:  # a real client over HTTP, as a run asks
        report = caption_workspace(ctx.ws, CaptionSettings(base_url=server.url), "sk-set", kept_only=False)
    run = ctx.ws.store.create_run(kind="caption", settings={}, inputs={}, author="ada")
    ctx.ws.store.finish_run(run, RunStatus.DONE, exit_code=0, result=report.as_dict())
    text = readiness(ctx)
    assert f"Last caption run **{run}**" in text and f"Captioned **{report.captioned}**" in text
    assert "estimated cost $" in text and "UTC" in text and "+00:00" not in text
    # a count without a total reads as finished once the run is
    assert describe(ctx.ws.store.run(run))["progress"] == "0 done"


def test_connection_error_names_the_url_it_tried(ctx):
    from studio.captions.captioner import CaptionSettings, caption_workspace

    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    report = caption_workspace(ctx.ws, CaptionSettings(base_url=url, max_retries=0, timeout=2), "sk-x", kept_only=False)
    assert report.failed == 2 and all(f"could not connect to {url}" in e for e in report.errors)


def test_empty_attribute_plot_is_hidden_and_explained(ctx):
    from studio.ui.statistics import count_axis_top, statistics_values

    values = statistics_values(ctx)
    attributes, note = values[5], values[6]
    assert attributes.visible is False and "no attribute tags yet" in note and "Captions tab" in note
    assert count_axis_top(2) == 10 and count_axis_top(95) == 105  # small counts get whole-number ticks


def test_mistakes_in_ui_events_keep_the_screen(ctx):
    import gradio as gr

    from studio.ui.wiring import Wiring

    def on_page(page):
        if page == "bad":
            raise ValueError("page must be a whole number")
        return 1, 2, 3

    handler = Wiring(ctx).guard(on_page, ["summary", "gallery", "page"], role=None)  # three outputs, counted
    assert handler("ok") == (1, 2, 3)
    with pytest.warns(UserWarning, match="page must be a whole number"):
        kept = handler("bad")
    assert kept == tuple(gr.skip() for _ in range(3))


def test_a_bound_event_checks_the_role_before_its_handler_runs(tmp_path):
    """The role check is the binding's, not the handler's: an annotator's call never reaches the handler,
    a refresh of theirs is kept silently, and a handler that cannot be checked is refused when bound."""
    import gradio as gr

    from studio.auth import UsersFile
    from studio.ui.wiring import Wiring

    users = UsersFile(tmp_path / "users.json")
    users.add("ada", "pw-ada-12345", "admin")
    users.add("ann", "pw-ann-12345", "annotator")
    w = Wiring(StudioContext(Workspace.open(tmp_path / "ws"), AccessPolicy("local", users=users)))
    ran = []

    def on_data(request: gr.Request, x):
        ran.append(x)
        return x, x

    checked = w.guard(on_data, ["a", "b"])
    assert checked(gr.Request(username="ada"), 1) == (1, 1)
    with pytest.raises(gr.Error, match="Access denied: this needs the admin role \\(ann is annotator\\)"):
        checked(gr.Request(username="ann"), 2)
    with pytest.raises(gr.Error, match="not signed in is without a role"):
        checked(gr.Request(), 3)
    assert w.guard(on_data, ["a", "b"], quiet=True)(gr.Request(username="ann"), 4) == (gr.skip(), gr.skip())
    assert ran == [1]

    def no_request(x):
        return x

    with pytest.raises(TypeError, match="bound with a role check but takes no gr.Request"):
        w.guard(no_request, ["a"])
    assert w.guard(no_request, ["a"], role=None)(5) == 5  # a handler with no data to guard


def test_training_form_becomes_a_checked_config():
    from studio.ui.training import config_from_form

    form = dict(name="cf-1", model="tiny", start="model", learning_rate=1e-5, max_steps=10.0, batch_size=2.0,
                resolution=64.0, precision="no", devices="cpu", accelerate_config="(none)", checkpoint_every=5.0,
                validation_every=0.0, missing_caption="skip", manifest="  ", extra="--drop_face 0.1")
    c = config_from_form(form)
    assert c.manifest is None and c.accelerate_config is None and c.max_steps == 10 and isinstance(c.max_steps, int)
    assert c.extra == ["--drop_face", "0.1"] and c.device_set() == {"cpu"}
    assert c.to_cli()[:2] == ["--name", "cf-1"] and c.to_cli()[-3:] == ["--", "--drop_face", "0.1"]
    for change, message in ((dict(extra="--output_dir /etc"), "set by the studio"), (dict(name="a b"), "name must be"),
                            (dict(devices="0;rm"), "devices must be"), (dict(max_steps=0.0), "max_steps must be"),
                            (dict(resolution=100.0), "multiple of 8"), (dict(extra="'unclosed"), "more script arguments"),
                            (dict(accelerate_config="nope"), "accelerate config 'nope'")):
        with pytest.raises(ValueError, match=message):
            config_from_form({**form, **change})


def test_a_workspace_of_many_persons_lists_those_with_most_images(ctx, photos, monkeypatch, tmp_path):
    """At FaceID-6M's scale the person list is capped (most images first) and any name can be typed."""
    from studio.ui import browse as browse_tab

    extra = tmp_path / "more" / "obama"
    extra.mkdir(parents=True)
    Image.open(photos["obama"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(extra / "flipped.jpg")
    ingest(ctx.ws, tmp_path / "more")  # obama: 2 images, biden: 1
    persons = browse_tab.choices_update(ctx)[0]
    assert [v for _, v in persons["choices"]] == ["biden", "obama"] and persons["label"] == "Person"
    monkeypatch.setattr(browse_tab, "MAX_PERSON_CHOICES", 1)
    persons = browse_tab.choices_update(ctx)[0]
    assert persons["choices"] == [("obama (2)", "obama")] and "type any name" in persons["label"]
    assert browse(ctx.ws, BrowseFilter(persons=["biden"])).total == 1  # a typed name still filters


def test_small_texts_say_what_they_mean(monkeypatch):
    """The Base URL label follows the server's OPENAI_BASE_URL; the pairing summary is words, not a dict."""
    from studio.ui.captions import base_url_label
    from studio.ui.training import EXCLUDED_BY

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert base_url_label().startswith("Base URL (empty: OpenAI;")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert "the server's OPENAI_BASE_URL" in base_url_label()
    from studio.train.pairs import near_duplicate

    same = {"phash": "f" * 16, "face_phash": None, "emb": None}
    assert near_duplicate(same, dict(same), 6, 0.95) in EXCLUDED_BY  # every reason has its words
