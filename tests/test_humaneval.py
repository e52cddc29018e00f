"""Human evaluation studies on the real SQLite store: assignment, blind items, bad scores refused whole,
history kept, Table 3 and Krippendorff's alpha against hand-computed values, exports."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from studio.human import studies as he
from studio.workspace import Workspace

MODELS = ["zebra-model", "quokka-model"]


@pytest.fixture
def study_ws(tmp_path, photos):
    """A workspace with 4 generated-like images (2 per model) and their input faces."""
    ws = Workspace.open(tmp_path / "ws")
    (ws.root / "generated").mkdir()
    samples = []
    for i, name in enumerate(["obama", "obama2", "biden", "astronaut"]):
        img, face = ws.root / "generated" / f"s{i}.png", ws.root / "generated" / f"f{i}.png"
        shutil.copy(photos[name], img)
        shutil.copy(photos["obama"], face)
        samples.append({"model": MODELS[i % 2], "prompt": f"a person smiling {i}", "image_path": f"generated/s{i}.png",
                        "face_path": f"generated/f{i}.png"})
    return ws, samples


def test_assignment_is_balanced_seeded_and_duplicates_go_to_the_same_annotators(study_ws):
    ws, samples = study_ws
    made = he.create_study(ws, "s1", samples, ["ann1", "ann2", "ann3"], per_item=2, duplicates=1, seed=5)
    assert made["items"] == 5 and sum(made["per_annotator"].values()) == 5 * 2
    sid = made["id"]
    items = {i["idx"]: i for i in ws.store.study_items(sid)}
    who = {}
    for a in ("ann1", "ann2", "ann3"):
        order = [ws.store.assignment(sid, a, p)["prompt"] for p in range(1, made["per_annotator"][a] + 1)]
        for prompt in order:
            who.setdefault(prompt, []).append(a)
    dup = next(i for i in items.values() if i["kind"] == "duplicate")
    original = next(i for i in items.values() if i["id"] == dup["duplicate_of"])
    twice = who.pop(original["prompt"])
    assert len(twice) == 4 and len(set(twice)) == 2  # the same two annotators see the duplicate
    assert all(len(v) == 2 and len(set(v)) == 2 for v in who.values())
    assert he.assign(4, ["a", "b", "c"], 2, 5) == he.assign(4, ["a", "b", "c"], 2, 5)  # seeded
    with pytest.raises(ValueError, match="exists"):
        he.create_study(ws, "s1", samples, ["ann1"])
    (ws.root / samples[0]["image_path"]).unlink()
    with pytest.raises(ValueError, match="missing"):
        he.create_study(ws, "s2", samples, ["ann1"])
    assert ws.store.study("s2") is None  # nothing stored half


def test_scores_are_validated_whole_and_rescoring_keeps_history(study_ws):
    ws, samples = study_ws
    sid = he.create_study(ws, "s", samples, ["ann1", "ann2"], per_item=2)["id"]
    with pytest.raises(ValueError, match="draft"):
        ws.store.save_scores(sid, "ann1", 1, {"quality": 3}, None)
    he.set_status(ws, "s", "open")
    study = he.annotator_study(ws, "s", "ann1")
    item = he.item_for(ws, sid, "ann1")
    assert item["position"] == 1 and item["total"] == 4 and set(item) >= {"prompt", "image_path", "scores"}
    assert "model" not in item  # blind
    for bad, msg in (({"quality": 6}, "0 to 5"), ({"quality": 2.5}, "0 to 5"), ({"quality": "x"}, "0 to 5"),
                     ({"quality": True}, "0 to 5"), ({"beauty": 3}, "unknown criterion"),
                     ({"quality": 3, "fidelity": -1}, "0 to 5"), ({}, "at least one")):
        with pytest.raises(ValueError, match=msg):
            he.save(ws, sid, "ann1", 1, bad)
    assert ws.store.study_scores(sid) == []  # a batch with one bad score stores none of it
    with pytest.raises(ValueError, match="not one of your items"):
        he.save(ws, sid, "ann1", 99, {"quality": 3})
    with pytest.raises(ValueError, match="assigned to you"):
        he.annotator_study(ws, "s", "stranger")
    assert he.save(ws, sid, "ann1", 1, {"customization": 2, "fidelity": "4"})["done"] is False
    assert he.save(ws, sid, "ann1", 1, {"quality": 5}, comment="fine")["done"] is True
    assert he.save(ws, sid, "ann1", 1, {"quality": 5}) == {"changed": 0, "done": True}  # same again: no change
    he.save(ws, sid, "ann1", 1, {"quality": 3})
    scores = {r["criterion"]: r["score"] for r in ws.store.study_scores(sid)}
    assert scores == {"customization": 2, "fidelity": 4, "quality": 3} and ws.store.score_history_count(sid) == 4
    assert he.item_for(ws, sid, "ann1")["position"] == 2  # resumes at the first unfinished item
    assert he.item_for(ws, sid, "ann1", 1)["comment"] == "fine"
    # ann2 cannot touch ann1's scores: positions are per annotator
    he.save(ws, sid, "ann2", 1, {"quality": 1})
    assert {r["score"] for r in ws.store.study_scores(sid) if r["annotator"] == "ann1" and r["criterion"] == "quality"} == {3}
    # an image deleted after the study was made: scoring it is refused with a message
    pos = next(p for p in range(1, 5) if ws.store.assignment(sid, "ann2", p)["image_path"] == samples[2]["image_path"])
    (ws.root / samples[2]["image_path"]).unlink()
    assert he.item_for(ws, sid, "ann2", pos)["missing"] is True
    with pytest.raises(ValueError, match="no longer available"):
        he.save(ws, sid, "ann2", pos, {"quality": 2})
    he.set_status(ws, "s", "closed")
    with pytest.raises(ValueError, match="closed"):
        he.save(ws, sid, "ann1", 2, {"quality": 2})
    with pytest.raises(ValueError, match="closed"):
        he.annotator_study(ws, "s", "ann1")
    assert study["name"] == "s" and study["assigned"]


def _hand_alpha_ordinal(data: np.ndarray) -> float:
    """Krippendorff's alpha, ordinal metric, from the coincidence matrix (values 0-5), written out by hand."""
    values = range(6)
    o = np.zeros((6, 6))
    for col in data.T:
        v = col[~np.isnan(col)].astype(int)
        m = len(v)
        if m < 2:
            continue
        for i in range(m):
            for j in range(m):
                if i != j:
                    o[v[i], v[j]] += 1 / (m - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    delta = np.array([[(sum(n_c[g] for g in range(min(c, k), max(c, k) + 1)) - (n_c[c] + n_c[k]) / 2) ** 2
                       for k in values] for c in values])
    d_o = (o * delta).sum() / n
    d_e = (np.outer(n_c, n_c) * delta).sum() / (n * (n - 1))
    return 1 - d_o / d_e


def test_table3_alpha_and_exports_against_hand_computed_values(study_ws):
    ws, samples = study_ws
    sid = he.create_study(ws, "fixed", samples, ["ann1", "ann2", "ann3"], per_item=3, seed=1)["id"]
    he.set_status(ws, "fixed", "open")
    # scores[annotator][sample idx] = (customization, fidelity, quality)
    given = {"ann1": {0: (5, 4, 3), 1: (1, 2, 2), 2: (4, 4, 4), 3: (0, 1, 3)},
             "ann2": {0: (4, 4, 3), 1: (2, 2, 1), 2: (5, 3, 4), 3: (1, 0, 2)},
             "ann3": {0: (5, 5, 2), 1: (0, 3, 2), 2: (4, 4, 5)}}  # ann3 leaves item 3 unscored
    prompt_of = {i: s["prompt"] for i, s in enumerate(samples)}
    for a, per in given.items():
        for p in range(1, 5):
            idx = next(i for i, pr in prompt_of.items() if pr == ws.store.assignment(sid, a, p)["prompt"])
            if idx in per:
                he.save(ws, sid, a, p, dict(zip(("customization", "fidelity", "quality"), per[idx])))
    res = he.results(ws, "fixed")
    t3 = {(r["model"], r["criterion"]): r for r in res["table3"]}
    # zebra-model made samples 0 and 2, quokka-model 1 and 3
    z_custom = [5, 4, 5, 4, 5, 4]
    assert t3[("zebra-model", "customization")] == {"model": "zebra-model", "criterion": "customization", "min": 4,
                                                    "max": 5, "avg": pytest.approx(np.mean(z_custom)),
                                                    "std": pytest.approx(np.std(z_custom, ddof=1)), "n": 6}
    q_quality = [2, 2, 1, 3, 2]  # sample 1 by ann1-3, sample 3 by ann1-2
    r = t3[("quokka-model", "quality")]
    assert (r["min"], r["max"], r["n"]) == (1, 3, 5) and r["avg"] == pytest.approx(np.mean(q_quality))
    assert r["std"] == pytest.approx(np.std(q_quality, ddof=1))
    for k, crit in enumerate(("customization", "fidelity", "quality")):
        data = np.full((3, 4), np.nan)
        for ai, a in enumerate(("ann1", "ann2", "ann3")):
            for idx, sc in given[a].items():
                data[ai, idx] = sc[k]
        assert res["alpha"][crit] == pytest.approx(_hand_alpha_ordinal(data), abs=1e-9)
    ann = {x["annotator"]: x for x in res["annotators"]}
    assert ann["ann3"]["items"] == 3 and ann["ann1"]["mean_customization"] == pytest.approx(2.5)
    files = he.export(ws, "fixed")
    with open(ws.root / files["scores.csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 11 * 3 and set(rows[0]) >= {"sample", "model", "annotator", "criterion", "score", "time"}
    tasks = json.loads((ws.root / files["labelstudio/tasks.json"]).read_text())
    first = next(t for t in tasks if t["data"]["item"] == 0)
    assert len(first["annotations"]) == 3 and first["annotations"][0]["result"][0]["type"] == "choices"
    assert {x["value"]["choices"][0] for a in first["annotations"] for x in a["result"]
            if x["from_name"] == "Quality"} == {"3", "2"}
    assert {a["completed_by"]["email"] for a in first["annotations"]} == {"ann1@studio.local", "ann2@studio.local",
                                                                          "ann3@studio.local"}
    assert first["data"]["image"].startswith("data:image/") and "model" not in first["data"]
    assert "| zebra-model | customization | 4 | 5 |" in (ws.root / files["table3.md"]).read_text()


@pytest.mark.parametrize("value", [6, -1, 2.5, 4.0, True, "\uff15", "\u0664", " 4 ", "04", "4.0", "", None, [4], 2**70])
def test_a_score_is_an_int_or_one_of_the_strings_the_radios_send(value):
    with pytest.raises(ValueError, match="a score is a whole number from 0 to 5"):
        he.parse_score(value, "quality")


def test_scores_and_positions_that_are_accepted():
    assert [he.parse_score(v, "fidelity") for v in (0, 5, "0", "3", "5")] == [0, 5, 0, 3, 5]
    assert he.parse_position(1) == 1 and he.parse_position(2**31 - 1) == 2**31 - 1
    for bad in (0, -1, 2.9, 1.5, 2.0, True, "2", 2**70, None):
        with pytest.raises(ValueError, match="item position must be a whole number from 1"):
            he.parse_position(bad)


def test_a_label_studio_export_with_bad_tasks_keeps_the_good_ones(study_ws, tmp_path):
    """Each bad task or value of a Label Studio export is named and left out; the rest is imported."""
    from studio.human import labelstudio as ls

    ws, samples = study_ws
    he.create_study(ws, "imp", samples, ["ann1"], per_item=1, seed=0)

    def ann(email, **scores):
        return {"completed_by": {"email": email}, "result": [
            {"from_name": k.capitalize(), "to_name": "image", "type": "choices", "value": {"choices": [v]}}
            for k, v in scores.items()] + [{"from_name": "comment", "type": "textarea", "value": {"text": ["ok"]}}]}

    tasks = [
        {"data": {"study": "imp", "item": 0}, "annotations": [ann("ann1@studio.local", customization="4",
                                                                  fidelity="7", quality="2")]},
        {"data": {"study": "imp", "item": 1}, "annotations": [{"completed_by": 99, "result": []}]},
        {"data": {"study": "other", "item": 2}, "annotations": [ann("ann1@studio.local", quality="3")]},
        {"data": {"study": "imp", "item": 1}, "annotations": [ann("bob@lab.org", quality="1\x00")]},
        {"data": {"study": "imp", "item": 2}, "annotations": [{**ann("ann1@studio.local", quality="5"),
                                                               "was_cancelled": True}]},
        "not a task",
    ]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    got = ls.import_labelstudio(ws, "imp", tmp_path / "export.json")
    problems = "\n".join(got["problems"])
    assert "fidelity: a score is a whole number from 0 to 5, got '7'" in problems
    assert "annotator 99 unknown" in problems and "not an item of study 'imp'" in problems
    assert "quality: a score is a whole number from 0 to 5" in problems and len(got["problems"]) == 5
    sid = ws.store.study("imp")["id"]
    stored = {(r["annotator"], r["idx"], r["criterion"]): r["score"] for r in ws.store.study_scores(sid)}
    assert stored == {("ann1", 0, "customization"): 4, ("ann1", 0, "quality"): 2}  # the cancelled one is not read
    assert got["annotators"] == ["ann1", "bob@lab.org"] and got["comments"] == 2
