"""One file that runs the paper's experiment: split -> pairs -> train each model -> test sets -> evaluate -> study.

An experiment file (YAML) holds a section per stage, each written in that stage's own settings
(the fields of :data:`studio.runs.stages.STAGES`' classes, checked by the same ``from_dict`` gate
as the app and the API)::

    name: paper
    split: {shares: "0.8,0.1,0.1"}
    pairs: {per_image: 3}
    train:                       # one run per model; `model` is the starting model
      - {name: instantid-cf, model: InstantID, recipe: crossfaceid, face_candidates: true}
    testsets:
      - {action: import, name: crossfaceid-test, file: data/crossfaceid-test}
    evaluate: {models: [InstantID, instantid-cf], testsets: [crossfaceid-test], lambdas: [0.8]}
    study: {name: paper-study, faces: crossfaceid-test, prompts: [...], models: [...], annotators: [...]}

Every stage is a run (history, log, Runs tab), started in this process as the CLI starts one. A
stage's key is a hash of its settings and of the keys of the stages it depends on; a rerun skips
a stage whose key is unchanged and whose run finished, and reruns a changed one and what depends
on it (a killed training run resumes from its last checkpoint). The state is kept in
``experiments/<name>.json`` in the workspace; nothing a person made (a trained model, a study) is
replaced: a changed training or study stage under the same name is refused with what to rename.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..codes import RunStatus
from ..workspace import Workspace, atomic_write_bytes

SECTIONS = ("name", "description", "needs", "split", "pairs", "train", "testsets", "evaluate", "study")


@dataclass
class Step:
    """One stage of an experiment: its id, settings and the ids of the steps it depends on."""

    id: str
    settings: object  # a RunSettings
    after: list[str] = field(default_factory=list)


def load(path: Path) -> tuple[str, list[Step]]:
    """The experiment's name and its steps, every section checked by its stage's settings class."""
    import yaml

    from .stages import STAGES

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"experiment file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"experiment file {path}: expected sections {', '.join(SECTIONS)}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ValueError(f"experiment file {path}: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    name = str(data.get("name") or path.stem)
    base = path.parent

    def settings(kind: str, values, where: str):
        if not isinstance(values, dict):
            raise ValueError(f"{path.name}: {where} must be a mapping of {kind} settings")
        try:
            return STAGES[kind].settings.from_dict(values)
        except ValueError as exc:
            raise ValueError(f"{path.name}: {where}: {exc}") from None

    steps: list[Step] = []
    if data.get("split") is not None:
        steps.append(Step("split", settings("split", data["split"], "split")))
    if data.get("pairs") is not None:
        steps.append(Step("pairs", settings("pairs", data["pairs"], "pairs"), [s.id for s in steps]))
    data_steps = [s.id for s in steps]
    trained = []
    for k, values in enumerate(data.get("train") or []):
        s = settings("train", values, f"train[{k}]")
        trained.append(Step(f"train:{s.name}", s, list(data_steps)))
    made_sets = []
    for k, values in enumerate(data.get("testsets") or []):
        values = dict(values or {})
        if values.get("file") and not Path(values["file"]).is_absolute():
            values["file"] = str(base / values["file"])  # relative to the experiment file
        s = settings("testset", {"replace": True, **values}, f"testsets[{k}]")
        made_sets.append(Step(f"testset:{s.name}", s, [x for x in data_steps if s.action == "build"]))
    steps += trained + made_sets
    later = [s.id for s in trained + made_sets]
    if data.get("evaluate") is not None:
        steps.append(Step("evaluate", settings("evaluate", data["evaluate"], "evaluate"), later))
    if data.get("study") is not None:
        values = {"action": "generate", **data["study"]}
        if values.get("prompts_file"):
            from ..human.design import read_prompts

            values["prompts"] = read_prompts(base / values.pop("prompts_file"))
        steps.append(Step("study", settings("study", values, "study"), later))
    if not steps:
        raise ValueError(f"experiment file {path}: no stage to run")
    return name, steps


def keys(steps: list[Step]) -> dict[str, str]:
    """Each step's key: its settings and the keys of what it depends on."""
    out: dict[str, str] = {}
    for s in steps:
        payload = json.dumps({"settings": s.settings.to_dict(), "after": [out[a] for a in s.after]}, sort_keys=True)
        out[s.id] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return out


def state_file(ws: Workspace, name: str) -> Path:
    return ws.root / "experiments" / f"{hashlib.sha256(name.encode()).hexdigest()[:12]}.json"


def read_state(ws: Workspace, name: str) -> dict:
    f = state_file(ws, name)
    return json.loads(f.read_text()) if f.is_file() else {"name": name, "steps": {}}


def _write_state(ws: Workspace, state: dict) -> None:
    f = state_file(ws, state["name"])
    f.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(f, json.dumps(state, indent=2).encode())


def status(ws: Workspace, path: Path) -> list[dict]:
    """Per step: done (its run finished with these settings), changed (to rerun), or to run; with its run."""
    name, steps = load(path)
    state, wanted = read_state(ws, name), keys(steps)
    out = []
    for s in steps:
        rec = state["steps"].get(s.id, {})
        run = ws.store.run(rec["run_id"]) if rec.get("run_id") else None
        if _finished(run, rec, wanted[s.id]):
            what = "done"
        elif rec.get("key") not in (None, wanted[s.id]):
            what = "changed"
        elif run is not None:
            what = run["status"]
        else:
            what = "to run"
        out.append({"step": s.id, "kind": s.settings.KIND, "state": what, "run": rec.get("run_id"),
                    "after": ", ".join(s.after)})
    return out


def run(ws: Workspace, path: Path, author: str, *, track: Callable | None = None,
        say: Callable[[str], None] = print) -> dict:
    """Run every step that is not done with its current settings, in order; returns each step's run id."""
    from . import jobs

    name, steps = load(path)
    state, wanted = read_state(ws, name), keys(steps)
    state["file"] = str(Path(path).resolve())
    done: dict[str, int] = {}
    for s in steps:
        rec = state["steps"].get(s.id, {})
        if _finished(ws.store.run(rec["run_id"]) if rec.get("run_id") else None, rec, wanted[s.id]):
            say(f"{s.id}: done (run {rec['run_id']}), skipped")
            done[s.id] = rec["run_id"]
            continue
        if rec.get("key") not in (None, wanted[s.id]):
            _refuse_replacing(ws, s)
        jobs.reap(ws)  # a run of a killed experiment is marked failed before its step starts again
        say(f"{s.id}: starting ({s.settings.KIND} run)")
        state["steps"][s.id] = {"key": wanted[s.id], "run_id": None, "kind": s.settings.KIND}
        _write_state(ws, state)
        run_id, result = jobs.start(ws, s.settings, author, track=track,
                                    on_start=lambda rid, sid=s.id: _record(ws, state, sid, rid))
        if result is None:
            raise ValueError(f"step {s.id} (run {run_id}) was cancelled; run the experiment again to go on")
        done[s.id] = run_id
        say(f"{s.id}: done (run {run_id})")
    return {"experiment": name, "runs": done}


def _finished(run, rec: dict, key: str) -> bool:
    """A step is done when its recorded run finished with the settings it has now."""
    return run is not None and rec.get("key") == key and run["status"] == RunStatus.DONE


def _record(ws: Workspace, state: dict, step: str, run_id: int) -> None:
    state["steps"][step]["run_id"] = run_id
    _write_state(ws, state)


def _refuse_replacing(ws: Workspace, s: Step) -> None:
    """A changed step that would replace what a person made under the same name is refused."""
    kind = s.settings.KIND
    if kind == "train":
        from ..models.generate import registered_models

        if s.settings.name in registered_models(ws):
            raise ValueError(f"step {s.id} changed, but model {s.settings.name!r} is trained already: give the "
                             "changed training another name")
    if kind == "study" and ws.store.study(s.settings.name) is not None:
        raise ValueError(f"step {s.id} changed, but study {s.settings.name!r} exists (with its scores): give the "
                         "changed study another name")


def overview(ws: Workspace) -> list[dict]:
    """Every experiment run in this workspace, step by step (for the Runs tab): from its file when it is still
    there, else as recorded."""
    out = []
    for f in sorted((ws.root / "experiments").glob("*.json")):
        state = json.loads(f.read_text())
        rows = None
        if state.get("file") and Path(state["file"]).is_file():
            try:
                rows = status(ws, Path(state["file"]))
            except ValueError:
                rows = None  # the file changed into something that does not load: show what ran
        if rows is None:
            rows = []
            for step, rec in state["steps"].items():
                run = ws.store.run(rec["run_id"]) if rec.get("run_id") else None
                rows.append({"step": step, "kind": rec.get("kind"), "state": run["status"] if run else "to run",
                             "run": rec.get("run_id"), "after": ""})
        out += [{"experiment": state["name"], **r} for r in rows]
    return out
