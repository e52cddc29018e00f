"""The Training tab's API as a browser-less client drives it: start, follow the loss, stop, finish, refuse."""
from __future__ import annotations

import time

import pytest
from conftest import USERS, copy_ws, running_app, wait_run
from gradio_client import Client

TINY = {"model": "tiny", "devices": "cpu", "precision": "no", "batch_size": 2, "resolution": 64,
        "missing_caption": "template", "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def train_app(pairs_ws_template, tmp_path_factory, tiny_spec, users_file):
    from studio.generate import register_model
    from studio.pairs import assign_splits, make_pairs

    ws = copy_ws(pairs_ws_template, tmp_path_factory.mktemp("train_ui") / "ws")
    assign_splits(ws, pins={"obama": "train", "eileen_collins": "train", "biden": "test"})
    make_pairs(ws)
    register_model(ws, tiny_spec)
    ws.store.close()
    with running_app(ws.root, "--auth", str(users_file)) as url:
        yield ws, url


def client(url, who="ada"):
    return Client(url, auth=(who, USERS[who][1]), verbose=False)


def wait_losses(c, run_id: int, n: int, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while True:
        s = c.predict(run_id=run_id, api_name="/train_status")
        if len(s["losses"]) >= n or s["status"] in ("done", "failed", "cancelled"):
            return s
        assert time.time() < deadline, s
        time.sleep(1)


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
    with pytest.raises(Exception, match=f"training run {long} .*is using cpu"):
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
    s = wait_losses(c, again, 0)
    deadline = time.time() + 180
    while "resuming from" not in s["log"] or max(step for step, _ in s["losses"]) <= last_step:
        assert time.time() < deadline and s["status"] in ("queued", "running"), s
        time.sleep(1)
        s = c.predict(run_id=again, api_name="/train_status")
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
    with pytest.raises(Exception, match="exists already"):
        c.predict(config={**TINY, "name": "ui-short", "max_steps": 2}, api_name="/train_start")
    with pytest.raises(Exception, match="unknown training settings"):
        c.predict(config={"name": "x", "rm -rf": 1}, api_name="/train_start")
    with pytest.raises(Exception, match="max_steps must be"):
        c.predict(config={**TINY, "name": "bad", "max_steps": 0}, api_name="/train_start")


def test_annotator_cannot_train(train_app):
    ws, url = train_app
    c = client(url, "ann")
    before = len(ws.store.runs(kind="train"))
    for api, kwargs in (("/gpus", {}), ("/train_status", {"run_id": 1}),
                        ("/train_start", {"config": {**TINY, "name": "sneaky", "max_steps": 1}})):
        with pytest.raises(Exception):
            c.predict(**kwargs, api_name=api)
    assert len(ws.store.runs(kind="train")) == before
