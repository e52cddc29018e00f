"""One experiment file runs the chain from the CLI: split, pairs, training, test sets, evaluation and a
designed study, each a run; killed during training and rerun, it resumes without redoing what is done."""
from __future__ import annotations

import json
import os
import signal

import pytest
import yaml
from conftest import studio_cli, wait_for

pytestmark = pytest.mark.slow  # trains, generates and scores tiny models


def experiment(tmp_path, clip_dir) -> str:
    small = {"steps": 2, "width": 64, "height": 64, "device": "cpu"}
    data = {
        "name": "tiny-paper",
        "split": {"person": ["obama=train", "eileen_collins=train", "biden=test"], "reassign": True},
        "pairs": {"per_image": 2},
        "train": [{"name": "tiny-cf", "model": "tiny", "max_steps": 40, "checkpoint_every": 2, "resolution": 64,
                   "batch_size": 2, "devices": "cpu", "precision": "no", "captions": "any",
                   "missing_caption": "template", "crop": "random", "face_candidates": True,
                   "learning_rate": 0.001}],
        "testsets": [{"action": "build", "name": "custom", "kind": "customization", "person": ["obama"],
                      "ask": "smiling", "per_person": 2},
                     {"action": "build", "name": "neutral", "kind": "fidelity", "split": "test"}],
        "evaluate": {"testsets": ["custom", "neutral"], "models": ["tiny", "tiny-cf"], "lambdas": [0.8],
                     "clip_model": str(clip_dir), "clip_pretrained": None, "n_boot": 100, **small},
        "study": {"name": "tiny-study", "faces": "neutral", "prompts": ["a photo of a person smiling"],
                  "models": ["tiny", "tiny-cf"], "annotators": ["ann1", "ann2"], **small},
    }
    path = tmp_path / "tiny-paper.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_an_experiment_file_runs_the_chain_and_resumes_after_a_kill(eval_ws, tiny_clip_dir, tmp_path):
    from studio.codes import CRITERIA, StudyStatus
    from studio.human import studies as he

    ws = eval_ws
    path = experiment(tmp_path, tiny_clip_dir)
    train_dir = ws.root / "training" / "tiny-cf"
    first = studio_cli("experiment", "run", path, "--workspace", ws.root, background=True, start_new_session=True)
    try:
        wait_for(lambda: (train_dir / "checkpoint-2").is_dir() or first.poll() is not None,
                 "the first training checkpoint", timeout=600)
        assert first.poll() is None, first.stderr.read()[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the experiment and its accelerate processes, mid-training
    first.wait()
    assert not (train_dir / "ip-adapter.bin").exists()
    state = {r["step"]: r["state"] for r in json.loads(studio_cli(
        "experiment", "status", path, "--workspace", ws.root, "--json").stdout)}
    assert state["split"] == state["pairs"] == "done" and state["train:tiny-cf"] in ("running", "failed")
    assert state["evaluate"] == "to run"

    again = studio_cli("experiment", "run", path, "--workspace", ws.root, timeout=1500)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "split: done" in again.stderr and "skipped" in again.stderr
    assert [len(ws.store.runs(kind=k)) for k in ("split", "pairs")] == [1, 1]  # not redone
    trains = ws.store.runs(kind="train")
    assert len(trains) == 2 and trains[0]["status"] == "done" and trains[1]["status"] == "failed"
    log = again.stdout + again.stderr  # an in-process run's output is the command's
    assert "resuming from" in log and "checkpoint-" in log  # the killed training went on from its checkpoint
    assert (train_dir / "ip-adapter.bin").is_file()
    card = json.loads((train_dir / "training_card.json").read_text())
    assert card["crop"] == "random" and card["steps"] == 40
    evaluation = ws.store.runs(kind="evaluate")[0]
    assert {r["model"] for r in evaluation["result"]["table"]} == {"tiny", "tiny-cf"}
    assert evaluation["result"]["against"] == {"tiny-cf": "tiny"}  # the fine-tuned row's bracket: its start

    # two annotators score the study; the report then holds Tables 1, 2 and 3
    study = he.get_study(ws, "tiny-study")
    he.set_status(ws, "tiny-study", StudyStatus.OPEN)
    for annotator, score in (("ann1", 3), ("ann2", 4)):
        for position in range(1, study["items"] + 1):
            he.save(ws, study["id"], annotator, position, {c: (score + position) % 6 for c in CRITERIA})
    out = studio_cli("report", "--workspace", ws.root, "--quiet")
    assert out.returncode == 0, out.stderr
    report = (ws.root / "exports" / "report.md").read_text()
    assert "## Table 1" in report and "**Table 2: automatic evaluation**" in report
    assert "**Table 3: human evaluation (tiny-study)**" in report and "| tiny-cf |" in report

    from studio.runs.experiment import overview

    shown = {r["step"]: r for r in overview(ws)}  # what the Runs tab lists
    assert all(r["state"] == "done" and r["experiment"] == "tiny-paper" for r in shown.values())
    assert shown["train:tiny-cf"]["run"] == trains[0]["id"]

    # a third run does nothing; a changed evaluation reruns only itself (and what follows it)
    third = studio_cli("experiment", "run", path, "--workspace", ws.root)
    assert third.returncode == 0 and third.stderr.count("skipped") == 7
    data = yaml.safe_load(open(path))
    data["evaluate"]["lambdas"] = [0.5]
    data["study"]["name"] = "tiny-study-2"
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)
    fourth = studio_cli("experiment", "run", path, "--workspace", ws.root)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert "train:tiny-cf: done" in fourth.stderr and "evaluate: starting" in fourth.stderr
    assert len(ws.store.runs(kind="train")) == 2 and len(ws.store.runs(kind="evaluate")) == 2


def test_the_paper_experiment_file_is_valid_and_says_what_it_needs():
    from conftest import REPO
    from studio.runs.experiment import load

    path = REPO / "experiments" / "crossfaceid-paper.yaml"
    name, steps = load(path)
    assert [s.id for s in steps][:2] == ["split", "pairs"] and steps[-2:][0].id == "evaluate"
    trained = [s.settings for s in steps if s.id.startswith("train:")]
    assert {t.model for t in trained} == {"IP-Adapter-FaceID", "InstantID", "InstantID-FaceID6M"}
    assert all(t.recipe == "crossfaceid" for t in trained)
    evaluation = next(s.settings for s in steps if s.id == "evaluate")
    assert len(evaluation.models) == 7 and {t.name for t in trained} <= set(evaluation.models)
    study = steps[-1].settings
    assert len(study.annotators) == 10 and len(study.prompts) >= 12  # the paper: 10 participants
    text = path.read_text()
    for needs in ("models --download sdxl", "instantid", "ip-adapter-faceid", "crossfaceid", "antelopev2", "clip",
                  "Super-shuhe/CrossFaceID", "register-model InstantID-FaceID6M"):
        assert needs in text
