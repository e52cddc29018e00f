"""One settings object per run kind (studio.runs.stages), and `python -m studio worker RUN_ID` as the only
way a run's worker starts: what a worker does comes from its run's row, never from its command line."""
from __future__ import annotations

import pytest
from conftest import studio_cli

from studio.runs import jobs as runs
from studio.cli import stage_parser
from studio.runs.stages import STAGES

#: the fewest arguments each kind's command needs
REQUIRED = {"ingest": ["/data/photos"], "export": ["--out", "exports/a"], "manifest": ["--out", "exports/m"],
            "train": ["--name", "m"], "testset": ["build", "--name", "t", "--kind", "fidelity"],
            "evaluate": ["--testset", "t", "--model", "InstantID"],
            "study": ["generate", "--name", "s", "--faces", "t", "--prompt", "p", "--model", "m", "--annotators", "a"]}
#: a non-default value of a few options per kind
CHANGED = {"ingest": ["--workers", "2", "--person-column", "who"], "analyze": ["--face-pack", "bundled", "--no-curate"],
           "curate": ["--min-faces", "2", "--no-reject-outliers"], "caption": ["--model", "m", "--all", "--batch"],
           "tag": ["--vocabulary", "v.json"], "export": ["--captions", "any", "--include-failed"],
           "split": ["--person", "a=test", "--person", "b=train", "--seed", "3"], "pairs": ["--max-face-cos", "0.9"],
           "manifest": ["--template", "a portrait"], "train": ["--lr", "0.001", "--", "--drop_face", "0.1"],
           "testset": ["--person", "a", "--ask", "smiling"], "evaluate": ["--lambdas", "0.5,0.8", "--engine", "ray"],
           "study": ["--per-item", "2", "--lambda", "0.5", "--prompt", "q", "--annotators", "a,b"]}


def test_every_run_kind_has_a_settings_class_and_a_command():
    assert set(STAGES) == set(runs.KINDS)
    for kind in runs.KINDS:
        stage_parser(kind)  # a CLI command of that name


@pytest.mark.parametrize("kind", runs.KINDS)
def test_the_command_line_defaults_are_the_settings_defaults(kind):
    """Defaults are written once, in the settings class: the CLI's parse of the fewest arguments gives them."""
    cls = STAGES[kind].settings
    from_cli = runs.settings_from_args(kind, REQUIRED.get(kind, []))
    required = {f: getattr(from_cli, f) for f in vars(from_cli) if f not in cls.defaults()}
    assert from_cli == cls.from_dict(required)


@pytest.mark.parametrize("kind", runs.KINDS)
def test_settings_go_to_the_command_line_and_back_unchanged(kind):
    """The Runs view shows a run as the command that asks for it; that command builds the same settings."""
    s = runs.settings_from_args(kind, REQUIRED.get(kind, []) + CHANGED[kind])
    assert s != runs.settings_from_args(kind, REQUIRED.get(kind, []))  # the changes are settings
    assert runs.settings_from_args(kind, s.to_cli()) == s
    assert type(s).from_dict(s.to_dict()) == s  # and through the run row


@pytest.mark.parametrize("data, message", [
    ({"face_pack": 3}, "analyze settings: face_pack must be text, got int"),
    ({"workers": "2"}, "analyze settings: workers must be a whole number, got '2'"),
    ({"workers": True}, "workers must be a whole number, got True"),
    ({"redo": "yes"}, "redo must be true or false"),
    ({"face_pack": "a\0b"}, "face_pack contains a NUL byte"),
    ({"workspace": "/elsewhere"}, "unknown analyze settings: \\['workspace'\\]"),
    ({"run_id": 3, "author": "x"}, "unknown analyze settings: \\['author', 'run_id'\\]"),
    ({"engine": "spark"}, "engine must be local or ray"),
    ("--face-pack bundled", "analyze settings must be an object of named fields, got str"),
])
def test_settings_from_fields_name_the_bad_field(data, message):
    with pytest.raises(ValueError, match=message):
        STAGES["analyze"].settings.from_dict(data)


def test_a_number_box_float_is_a_whole_number_and_required_fields_are_named():
    assert STAGES["pairs"].settings.from_dict({"per_image": 2.0}).per_image == 2
    with pytest.raises(ValueError, match="per_image must be a whole number, got 2.5"):
        STAGES["pairs"].settings.from_dict({"per_image": 2.5})
    with pytest.raises(ValueError, match="testset settings: action, name, kind are required"):
        STAGES["testset"].settings.from_dict({})


def test_the_worker_runs_a_queued_run_once_with_the_settings_of_its_row(photos_ws):
    """The worker's command line is the workspace and a run id; the row says the rest, and a row that does
    not hold valid settings fails that run, naming the field."""
    ws = photos_ws
    bad = ws.store.create_run(kind="curate", settings={"min_faces": "two"}, inputs={}, author="ada")
    out = studio_cli("worker", "--workspace", ws.root, bad)
    assert out.returncode == 2 and "curate settings: min_faces must be a whole number" in out.stderr
    failed = ws.store.run(bad)
    assert failed["status"] == "failed" and "min_faces must be a whole number" in failed["error"]
    out = studio_cli("worker", "--workspace", ws.root, bad)  # a finished run is not started again
    assert out.returncode == 2 and f"run {bad} is failed: a worker starts a queued run once" in out.stderr

    good = ws.store.create_run(kind="tag", settings={}, inputs={}, author="bob")
    out = studio_cli("worker", "--workspace", ws.root, good, "--json")
    assert out.returncode == 0, out.stderr
    done = ws.store.run(good)
    assert done["status"] == "done" and done["author"] == "bob" and "tags" in done["result"]
    assert out.stdout.startswith(f"run {good}: tag by bob")
    assert studio_cli("worker", "--workspace", ws.root, good, "--author", "eve").returncode == 2  # still once


def test_a_submitted_run_starts_the_worker_with_its_id_only(photos_ws):
    ws = photos_ws
    run_id = runs.submit(ws, STAGES["curate"].settings.from_dict({"min_faces": 1}), "ada")
    r = ws.store.run(run_id)
    assert r["argv"] == ["worker", "--workspace", str(ws.root), str(run_id)]
    assert r["settings"]["min_faces"] == 1 and r["settings"]["max_faces"] is not None  # recorded resolved
    assert runs.equivalent_command(r).startswith("python -m studio curate --min-faces 1")
    with pytest.raises(ValueError, match="a run needs a settings object, got list"):
        runs.submit(ws, ["curate", "--workspace", "/x"], "ada")  # type: ignore[arg-type]


def test_a_run_recorded_before_settings_objects_reruns_from_its_command_line(photos_ws):
    """Workspaces made by earlier versions kept a worker's arguments, not its settings: those still rerun."""
    ws = photos_ws
    old = ws.store.create_run(kind="analyze", settings={"args": ["--face-pack", "bundled"]}, inputs={}, author="ada",
                              argv=["analyze", "--workspace", str(ws.root), "--run-id", "1", "--author", "ada",
                                    "--face-pack", "bundled", "--no-curate"])
    ws.store.finish_run(old, "failed", error="killed")
    s = runs.recorded_settings(ws.store.run(old))
    assert (s.face_pack, s.curate) == ("bundled", False)
    unreadable = ws.store.create_run(kind="analyze", settings={"args": []}, inputs={}, author="ada", argv=None)
    ws.store.finish_run(unreadable, "failed", error="killed")
    with pytest.raises(ValueError, match=f"run {unreadable}'s settings cannot be read back"):
        runs.rerun(ws, unreadable, "ada")

