"""Evaluation end to end on real parts: test sets from a curated workspace (real insightface), two tiny
InstantID models through the production loader, a tiny open_clip, the `python -m studio evaluate` CLI,
tables, trade-off curve, report, and resuming a killed run without regenerating anything."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import studio_cli
from studio.evaluation.evaluate import EvalConfig, check_start, evaluate
from studio.models.generate import register_model
from studio.models import ModelSpec
from studio.models.settings import DEMO_NEGATIVE_PROMPT
from studio.train.pairs import assign_splits
from studio.evaluation.report import report_markdown
from studio.runs.jobs import execute
from studio.evaluation.testsets import build_testset, import_testset, item_rows

SMALL = dict(steps=2, width=64, height=64, guidance=3.0)


def _config(clip_dir, **kw) -> EvalConfig:
    return EvalConfig(**{"testsets": ["custom"], "models": ["tiny", "tiny-b"], "lambdas": [0.4, 0.8],
                         "clip_model": str(clip_dir), "clip_pretrained": None, "n_boot": 200, "device": "cpu",
                         **SMALL, **kw})


def _run(ws, cfg, track=None):
    return execute(ws, "evaluate", cfg.to_dict(), "tester",
                   lambda h: evaluate(ws, cfg, h.run_id, author="tester", track=track or h.track))


@pytest.mark.slow
def test_two_models_two_lambdas_three_items_table_curve_report_and_resume(eval_ws, tiny_clip_dir):
    ws = eval_ws
    made = build_testset(ws, "custom", "customization", persons=["obama"], ask=["smiling"], per_person=3)
    assert made["items"] == 3 and made["persons"] == 1 and made["pack"] == "bundled"
    assert all(r["attribute"] and r["prompt"].startswith("a photo of a person, ") for r in item_rows(ws, "custom"))
    cfg = _config(tiny_clip_dir)

    # a run killed after 5 of its 12 samples (an interrupt inside the generation loop)
    def killed(items, **_):
        for n, item in enumerate(items):
            if n == 5:
                raise KeyboardInterrupt
            yield item
    with pytest.raises(KeyboardInterrupt):
        _run(ws, cfg, track=killed)
    assert len(ws.store.generations()) == 5

    # the CLI resumes it: only the 7 missing samples are generated
    out = studio_cli("evaluate", "--workspace", ws.root, *cfg.to_cli(), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert (res["samples"], res["generated"], res["reused"]) == (12, 7, 5)
    assert len(ws.store.generations()) == 12
    table = res["table"]
    assert [(r["model"], r["lambda"]) for r in table] == [("tiny", 0.4), ("tiny", 0.8), ("tiny-b", 0.4), ("tiny-b", 0.8)]
    for r in table:
        assert r["n"] == 3 and r["clip_t_n"] == 3 and r["clip_i_n"] == 3 and r["unscored"] == 0
        assert r["clip_t_lo"] <= r["clip_t"] <= r["clip_t_hi"]
        assert r["missing_faces"] + r["face_sim_n"] == 3  # every faceless sample is counted, none dropped
        assert r["attr_acc_n"] + r["pose_acc_n"] == 3  # every item asks for one attribute, pose ones apart
        assert ("d_clip_t" in r) == (r["model"] == "tiny-b")  # paired deltas against the baseline (first model)
    assert sum(res["missing_faces"].values()) == sum(r["missing_faces"] for r in table)
    assert [(p["model"], p["lambda"]) for p in res["tradeoff"]] == [(r["model"], r["lambda"]) for r in table]
    files = {k: ws.root / v for k, v in res["files"].items()}
    assert all(f.is_file() for f in files.values())
    md = files["table.md"].read_text()
    assert "tiny-b" in md and "(baseline)" in md and "λ trade-off" in md
    assert files["samples.csv"].read_text().count("\n") == 13
    # one default negative prompt for Generate and evaluation, recorded with every sample
    assert {g["settings"]["negative_prompt"] for g in ws.store.generations()} == {DEMO_NEGATIVE_PROMPT}
    assert "negative prompt: the official demo's" in md
    # the same samples have the same seeds for both models: seed + item index
    seeds = {(g["model"], g["settings"]["ip_scale"], g["settings"]["prompt"]): g["settings"]["seed"] for g in ws.store.generations()}
    assert {s for (m, _, _), s in seeds.items() if m == "tiny"} == {s for (m, _, _), s in seeds.items() if m == "tiny-b"}

    # a rerun reuses every sample and every score
    run_id, again = _run(ws, cfg)
    assert (again["generated"], again["reused"], again["scored"], again["scores_reused"]) == (0, 12, 0, 12)
    assert len(ws.store.generations()) == 12
    assert [r["clip_t"] for r in again["table"]] == pytest.approx([r["clip_t"] for r in table])
    # another λ only generates what is new
    _, more = _run(ws, _config(tiny_clip_dir, lambdas=[0.8, 1.0]))
    assert (more["generated"], more["reused"]) == (6, 6)

    report = report_markdown(ws)
    assert "## Table 1" in report and "## Table 2" in report and f"Evaluation run {run_id + 1}" in report
    assert "tiny-b" in report and "No human evaluation scores" in report
    out = studio_cli("report", "--workspace", ws.root, "--quiet")
    assert out.returncode == 0 and (ws.root / "exports" / "report.md").is_file()

    # a human-evaluation study of this run's samples, and of every generated sample, from the CLI
    from studio.cli import main

    w = ["--workspace", str(ws.root)]
    assert main(["study", "create", "--name", "h1", "--eval-run", str(run_id), "--annotators", "ann1,ann2",
                 "--per-item", "2", "--duplicates", "2", *w]) == 0
    study = ws.store.study("h1")
    assert study["items"] == 14 and study["assigned"] == 28 and study["status"] == "draft"
    items = ws.store.study_items(study["id"])
    assert {i["model"] for i in items} == {"tiny", "tiny-b"}
    assert all((ws.root / i["face_path"]).is_file() and (ws.root / i["image_path"]).is_file() for i in items)
    assert main(["study", "create", "--name", "all", "--all-generations", "--annotators", "ann1", *w]) == 0
    assert ws.store.study("all")["items"] == len(ws.store.generations())
    assert main(["study", "create", "--name", "bad", "--eval-run", "9999", "--annotators", "a", *w]) == 2
    assert main(["study", "open", "--name", "h1", *w]) == 0 and ws.store.study("h1")["status"] == "open"
    assert main(["study", "results", "--name", "h1", *w]) == 0


def test_testsets_from_a_split_and_from_a_file_with_bad_rows(eval_ws, photos, tmp_path, capsys):
    ws = eval_ws
    with pytest.raises(ValueError, match="split persons first"):
        build_testset(ws, "fid", "fidelity")
    assign_splits(ws, pins={"biden": "test"})
    made = build_testset(ws, "fid", "fidelity")
    assert made["persons"] == 1 and made["items"] == 2 and made["attributes"] == {"(none)": 2}
    assert {r["person"] for r in item_rows(ws, "fid")} == {"biden"}
    with pytest.raises(ValueError, match="exists"):
        build_testset(ws, "fid", "fidelity")
    with pytest.raises(ValueError, match="unknown attribute"):
        build_testset(ws, "x", "customization", persons=["obama"], ask=["wings"])

    src = tmp_path / "set"
    src.mkdir()
    Image.open(photos["obama2"]).save(src / "face.jpg")
    Image.new("RGB", (300, 300), (20, 90, 40)).save(src / "noface.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    obama_id = next(r["id"] for r in ws.store.image_table() if r["person"] == "obama" and r["passed"])
    lines = [{"input": "face.jpg", "prompt": "a photo of a man smiling", "target": "face.jpg", "person": "obama"},
             {"input": "noface.png", "prompt": "a photo of a person"},
             {"input": "broken.jpg", "prompt": "a photo of a person"},
             {"input": "face.jpg"},
             {"input": f"image:{obama_id}", "prompt": "a man looking up", "attribute": "looking up"},
             {"input": "face.jpg", "prompt": "a man with wings", "attribute": "wings"}]
    file = src / "items.jsonl"
    file.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    made = import_testset(ws, file, "imported", "customization", face_pack="bundled")
    assert made["items"] == 2 and made["attributes"] == {"looking up": 1, "smiling": 1}
    assert [p.split(":")[0] for p in made["left_out"]] == ["items.jsonl line 2", "items.jsonl line 3",
                                                           "items.jsonl line 4", "items.jsonl line 6"]
    assert "no face" in made["left_out"][0] and "prompt" in made["left_out"][2] and "wings" in made["left_out"][3]
    rows = item_rows(ws, "imported")
    assert rows[0]["input"].startswith("testsets/") and (ws.root / rows[0]["input"]).is_file()

    from studio.cli import main

    w = ["--workspace", str(ws.root)]
    assert main(["testset", "list", *w]) == 0
    capsys.readouterr()
    assert main(["testset", "show", "--name", "imported", "--json", *w]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["items"] == 2 and sorted(r["attribute"] for r in shown["rows"]) == ["looking up", "smiling"]
    assert main(["testset", "build", "--name", "cli-fid", "--kind", "fidelity", "--person", "obama", "--per-person", "2",
                 *w]) == 0
    assert ws.store.testset("cli-fid") is not None and len(item_rows(ws, "cli-fid")) == 2
    assert main(["testset", "delete", "--name", "imported", *w]) == 0 and ws.store.testset("imported") is None
    assert main(["testset", "delete", "--name", "imported", *w]) == 2  # named, refused


@pytest.mark.slow
def test_evaluate_refuses_what_it_cannot_do(eval_ws, tiny_clip_dir):
    ws = eval_ws
    build_testset(ws, "custom", "customization", persons=["obama"], ask=["smiling"], per_person=1)
    with pytest.raises(ValueError, match="no test set named 'nope'"):
        _run(ws, _config(tiny_clip_dir, testsets=["nope"]))
    with pytest.raises(ValueError, match="unknown model"):
        _run(ws, _config(tiny_clip_dir, models=["tiny", "ghost"]))
    with pytest.raises(ValueError, match="missing weights"):
        _run(ws, _config(tiny_clip_dir, models=["InstantID"]))
    with pytest.raises(ValueError, match="baseline"):
        _config(tiny_clip_dir, baseline="ghost").validate()
    with pytest.raises(ValueError, match="λ"):
        _config(tiny_clip_dir, lambdas=[2.5]).validate()
    before = len(ws.store.runs(kind="evaluate"))
    out = studio_cli("evaluate", "--workspace", ws.root, "--testset", "custom", "--model", "tiny", "--steps", "2", "--width", "64", "--height", "64",
               "--clip-model", "ViT-L-14", "--device", "cpu")
    assert out.returncode == 2 and "ViT-L-14/openai could not be loaded" in out.stderr and "hf download" in out.stderr
    assert "models --download clip" in out.stderr
    assert ws.store.generations() == []  # refused before any sample was generated
    assert len(ws.store.runs(kind="evaluate")) == before  # refused at start, as the app refuses it: no run to find
    (tiny_clip_dir.parent / "no-weights").mkdir(exist_ok=True)
    (tiny_clip_dir.parent / "no-weights" / "open_clip_config.json").write_text("{}")
    with pytest.raises(ValueError, match="has no weights"):
        check_start(ws, _config(tiny_clip_dir.parent / "no-weights", models=["tiny"]))
    check_start(ws, _config(tiny_clip_dir, models=["tiny"]))  # the tiny CLIP is here: accepted


def test_evaluate_refuses_a_face_pack_the_model_was_not_trained_on(eval_ws, tiny_clip_dir):
    """The test set's faces come from the bundled pack; a model trained on antelopev2 is refused before any
    sample is made, unless allowed, and then every sample records the mismatch."""
    import dataclasses

    ws = eval_ws
    spec = next(m for m in ws.store.get_setting("generation_models", []) if m["name"] == "tiny")
    register_model(ws, dataclasses.replace(ModelSpec(**spec), name="tiny-ante", face_pack="antelopev2"))
    build_testset(ws, "custom", "customization", persons=["obama"], ask=["smiling"], per_person=1)
    with pytest.raises(ValueError, match="'tiny-ante' was trained on 'antelopev2'.*'bundled' face pack"):
        _run(ws, _config(tiny_clip_dir, models=["tiny-ante"], lambdas=[0.8]))
    assert ws.store.generations() == []
    _run(ws, _config(tiny_clip_dir, models=["tiny-ante"], lambdas=[0.8], allow_pack_mismatch=True))
    rows = ws.store.generations()
    assert rows and all(r["face"]["pack_mismatch"] == {"model_expects": "antelopev2", "used": "bundled"} for r in rows)
    out = studio_cli("evaluate", "--workspace", ws.root, "--testset", "custom", "--model", "tiny-ante", "--steps", "2", "--width", "64",
               "--height", "64", "--clip-model", str(tiny_clip_dir), "--clip-pretrained", "", "--device", "cpu",
               "--lambdas", "0.5")
    assert out.returncode == 2 and "trained on 'antelopev2' face embeddings" in out.stderr


@pytest.mark.slow
def test_one_run_holds_both_families_and_a_study_of_it_rates_both(eval_ws, tiny_faceid_spec, tiny_clip_dir):
    """An InstantID model and an IP-Adapter-FaceID model in one evaluation run: Table 2 has a row for each,
    and a study built from the run gives Table 3 rows for each."""
    from studio.codes import CRITERIA, StudyStatus
    from studio.human import studies as he

    ws = eval_ws
    register_model(ws, tiny_faceid_spec)
    build_testset(ws, "custom", "customization", persons=["obama"], ask=["smiling"], per_person=2)
    run_id, res = _run(ws, _config(tiny_clip_dir, models=["tiny", "tiny-faceid"], lambdas=[0.8]))
    assert [(r["model"], r["n"]) for r in res["table"]] == [("tiny", 2), ("tiny-faceid", 2)]
    assert "d_clip_t" in res["table"][1]  # paired against the first model, on the same items and seeds
    families = {g["model"]: g["model_spec"].get("family", "InstantID") for g in ws.store.generations()}
    assert families == {"tiny": "InstantID", "tiny-faceid": "IP-Adapter-FaceID"}

    made = he.create_study(ws, "both", he.samples_from_generations(ws, eval_run=run_id), ["ann"], per_item=1)
    he.set_status(ws, "both", StudyStatus.OPEN)
    sid = he.get_study(ws, "both")["id"]
    for position in range(1, made["items"] + 1):
        he.save(ws, sid, "ann", position, {c: 4 if position % 2 else 2 for c in CRITERIA})
    rows = he.results(ws, "both")["table3"]
    assert {r["model"] for r in rows} == {"tiny", "tiny-faceid"}
    assert all(r["n"] == 2 for r in rows) and len(rows) == 2 * len(CRITERIA)
    # Table 3 as the paper lays it out: models as rows, Min / Max / Avg per criterion
    files = he.export(ws, "both")
    md = (ws.root / files["table3.md"]).read_text()
    assert ("| model | Customization Min | Customization Max | Customization Avg | Fidelity Min | Fidelity Max | "
            "Fidelity Avg | Quality Min | Quality Max | Quality Avg |") in md
    paper_rows = [line for line in md.split("\n\nStudy **")[0].splitlines() if line.startswith("| tiny")]
    assert [line.split(" | ")[0] for line in paper_rows] == ["| tiny", "| tiny-faceid"]
    assert all(len(line.strip("|").split("|")) == 1 + 3 * len(CRITERIA) for line in paper_rows)
    tex = (ws.root / files["table3.tex"]).read_text()
    assert r"\begin{tabular}{lccccccccc}" in tex and tex.count(r"\\") >= 2 + 2
    assert [len(line.split(",")) for line in (ws.root / files["table3.csv"]).read_text().splitlines()] == [10, 10, 10]


def test_a_fine_tuned_model_is_compared_with_the_model_it_started_from():
    """The paper's fine-tuned rows carry their gain over their own starting model ("(+0.04)"): each family's
    fine-tune against its parent, paired on the same items, whatever the run's baseline."""
    from studio.evaluation.evaluate import summarize, table_markdown

    def rows(model, clip_t):
        return [{"testset": "t", "kind": "fidelity", "model": model, "ip_scale": 0.8, "item_id": i, "faces": 1,
                 "clip_t": v} for i, v in enumerate(clip_t)]

    data = (rows("InstantID", [0.20, 0.22]) + rows("CrossFaceID-ours", [0.25, 0.27]) + rows("FaceID", [0.10, 0.12])
            + rows("FaceID-ours", [0.11, 0.15]))
    table = summarize(data, "InstantID", n_boot=0, against={"CrossFaceID-ours": "InstantID", "FaceID-ours": "FaceID"})
    by = {r["model"]: r for r in table}
    assert by["CrossFaceID-ours"]["d_against"] == "InstantID" and by["CrossFaceID-ours"]["d_clip_t"] == pytest.approx(0.05)
    assert by["FaceID-ours"]["d_against"] == "FaceID" and by["FaceID-ours"]["d_clip_t"] == pytest.approx(0.02)
    assert by["FaceID"]["d_against"] == "InstantID" and "d_clip_t" not in by["InstantID"]
    md = table_markdown(table, "InstantID")
    assert "| FaceID-ours (Δ vs FaceID) |" in md and "| CrossFaceID-ours |" in md and "| InstantID (baseline) |" in md


@pytest.mark.slow
def test_the_report_prints_table_2_as_the_paper_lays_it_out(eval_ws, tiny_spec, tiny_faceid_spec, tiny_clip_dir):
    """A base, a model fine-tuned from it and a model of the other family, over a customization set and a
    fidelity set: Table 2 has the paper's columns per set, the bracket only on the fine-tuned row, the best of
    each column in bold, and a LaTeX booktabs table whose rows all have the header's column count."""
    import re

    from studio.evaluation import tables

    ws = eval_ws
    register_model(ws, ModelSpec("tiny-ft", base=tiny_spec.base, identitynet=tiny_spec.identitynet,
                                 ip_adapter=str(ws.root.parent / "ip-adapter-b.bin"), face_pack="bundled", parent="tiny"))
    register_model(ws, tiny_faceid_spec)
    build_testset(ws, "custom", "customization", persons=["obama"], ask=["smiling"], per_person=2)
    build_testset(ws, "neutral", "fidelity", persons=["obama"], per_person=2)
    run_id, res = _run(ws, _config(tiny_clip_dir, testsets=["custom", "neutral"], models=["tiny", "tiny-ft", "tiny-faceid"],
                                   lambdas=[0.8]))
    assert res["against"] == {"tiny-ft": "tiny"}
    out = studio_cli("report", "--workspace", ws.root, "--run", run_id, "--quiet")
    assert out.returncode == 0, out.stderr[-2000:]
    report = (ws.root / "exports" / "report.md").read_text()
    table2 = report[report.index("**Table 2"):report.index("### The studio's own measures")]
    assert ("| model | custom CLIP-T | custom CLIP-I | neutral Face Sim | neutral CLIP-T | neutral CLIP-I |"
            in table2)
    rows = {line.split(" | ")[0].strip("| "): line for line in table2.splitlines() if line.startswith("| tiny")}
    assert set(rows) == {"tiny", "tiny-ft", "tiny-faceid"}
    assert re.search(r"\(([+-])\d\.\d{3}\)", rows["tiny-ft"]) and "(" not in rows["tiny"] + rows["tiny-faceid"]
    paper = tables.table2(res["table"], res["against"])
    filled = 0
    for j in range(5):  # exactly the best value of each column is bold (none in a column without values)
        values = [cells[j].value for _, cells in paper.rows if cells[j].value is not None]
        best = [bool(values) and c[j].value == max(values) for _, c in paper.rows]
        assert [cells[j].best for _, cells in paper.rows] == best
        filled += bool(values)
    assert filled >= 4 and table2.count("**") // 2 >= 1 + filled  # the title and a bold cell per filled column
    assert "Not defined by the paper" in report and "Attribute acc." in report  # the studio's own, apart

    tex = (ws.root / res["files"]["table2.tex"]).read_text()
    body = tex[tex.index(r"\begin{tabular}"):tex.index(r"\end{tabular}")]
    spec = re.search(r"\\begin\{tabular\}\{([lc]+)\}", body).group(1)
    assert spec == "l" + "cc" + "ccc" and body.count(r"\toprule") == body.count(r"\bottomrule") == 1
    lines = [x for x in body.splitlines() if x.endswith(r"\\")]
    spans = [sum(int(m) for m in re.findall(r"\\multicolumn\{(\d+)\}", x)) + 1 for x in lines[:1]]
    assert spans == [len(spec)]  # the group header covers every column
    assert all(x.count("&") == len(spec) - 1 for x in lines[1:]) and len(lines) == 2 + 3
    assert r"\textbf{" in body and "tiny-ft" in body and r"\cmidrule(lr){2-3} \cmidrule(lr){4-6}" in body


def _pairs_folder(root, photos):
    """CrossFaceID-test's shape (obama: the pair's photo + another photo of him as the input face) with two
    faults (a photo without its prompt, a prompt beside a photo without a face), and Unsplash-50's shape."""
    cross = root / "cross"
    (cross / "obama").mkdir(parents=True)
    Image.open(photos["obama"]).save(cross / "obama" / "0001.jpg")
    Image.open(photos["obama2"]).save(cross / "obama" / "0001.input.jpg")
    (cross / "obama" / "0001.txt").write_text("a photo of a man smiling\n", encoding="utf-8")
    Image.open(photos["obama3"]).save(cross / "obama" / "0002.jpg")  # no 0002.txt
    Image.new("RGB", (300, 300), (20, 90, 40)).save(cross / "0003.png")
    (cross / "0003.txt").write_text("a photo of a person laughing", encoding="utf-8")
    unsplash = root / "unsplash"
    unsplash.mkdir()
    Image.open(photos["biden"]).save(unsplash / "0001.jpg")
    (unsplash / "0001.txt").write_text("a man in a suit in front of a flag", encoding="utf-8")
    Image.open(photos["astronaut"]).save(unsplash / "0002.png")
    (unsplash / "0002.txt").write_text("an astronaut in an orange suit, wearing glasses", encoding="utf-8")
    return cross, unsplash


def _zip(folder, out, extra: dict | None = None):
    import zipfile

    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{folder.name}/{f.relative_to(folder).as_posix()}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


def test_testsets_from_folders_of_text_image_pairs_and_zips(eval_ws, photos, tmp_path):
    ws = eval_ws
    cross, unsplash = _pairs_folder(tmp_path, photos)

    made = import_testset(ws, cross, "cross", face_pack="bundled")  # kind inferred: pairs with input photos
    assert made["kind"] == "customization" and made["fills"].startswith("Table 2, as CrossFaceID-test")
    assert made["items"] == 1 and made["with_target_photo"] == 1 and made["attributes"] == {"smiling": 1}
    assert sorted(p.split(":")[0] for p in made["left_out"]) == ["0003.png", "obama/0002.jpg"]
    assert "no face" in " ".join(made["left_out"]) and "0002.txt is missing" in " ".join(made["left_out"])
    (row,) = ws.store.testset_items(ws.store.testset("cross")["id"])
    assert row["person"] == "obama" and row["prompt"] == "a photo of a man smiling"
    # the input face is the other photo; CLIP-I compares with the pair's own photo
    assert (ws.root / row["input_path"]).read_bytes() == (cross / "obama" / "0001.input.jpg").read_bytes()
    assert (ws.root / row["target_path"]).read_bytes() == (cross / "obama" / "0001.jpg").read_bytes()

    made = import_testset(ws, unsplash, "unsplash", face_pack="bundled")
    assert made["kind"] == "fidelity" and made["fills"].startswith("Table 2, as Unsplash-50")
    assert made["items"] == 2 and made["with_target_photo"] == 0 and made["left_out"] == []
    assert made["attributes"] == {"(none)": 2}  # a fidelity set asks for nothing, whatever its captions say

    # the same folder zipped (as the Evaluate tab uploads it) gives the same items; the scratch copy is removed
    made = import_testset(ws, _zip(cross, tmp_path / "cross.zip"), "cross-zip", face_pack="bundled")
    assert (made["kind"], made["items"], made["with_target_photo"]) == ("customization", 1, 1)
    assert not list((ws.root / "tmp").iterdir())
    # a zip holding a JSONL with the photos it names; a path out of the zip is that row's problem
    lines = [{"input": "face.jpg", "prompt": "a man looking sad", "target": "face.jpg"},
             {"input": str(photos["obama"]), "prompt": "a man smiling"}]
    z = _zip(tmp_path / "unsplash", tmp_path / "table.zip",
             {"face.jpg": (photos["obama2"]).read_bytes(), "items.jsonl": "\n".join(json.dumps(x) for x in lines)})
    made = import_testset(ws, z, "table-zip", "customization", face_pack="bundled")
    assert made["items"] == 1 and made["attributes"] == {"sad": 1}
    assert len(made["left_out"]) == 1 and "outside the uploaded zip" in made["left_out"][0]
    # a member that would land outside the scratch folder refuses the whole zip, and nothing is written there
    import zipfile

    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("set/0001.txt", "a prompt")
        zf.writestr("../../escaped.txt", "x")
    with pytest.raises(ValueError, match="refused member '../../escaped.txt'"):
        import_testset(ws, tmp_path / "evil.zip", "evil", face_pack="bundled")
    assert not (ws.root / "escaped.txt").exists() and not (ws.root.parent / "escaped.txt").exists()
    (tmp_path / "not.zip").write_bytes(b"no zip")
    with pytest.raises(ValueError, match="not a zip file"):
        import_testset(ws, tmp_path / "not.zip", "bad", face_pack="bundled")

    # the CLI: --kind may be left out for an import, and the list says which table each set fills
    out = studio_cli("testset", "import", "--workspace", ws.root, "--file", tmp_path / "cross.zip", "--name", "cli-zip",
                     "--face-pack", "bundled", "--json", env={"STUDIO_FACE_PACK": "bundled"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert ws.store.testset("cli-zip")["kind"] == "customization"
    listed = studio_cli("testset", "list", "--workspace", ws.root)
    assert "cli-zip" in listed.stdout and "CrossFaceID-test" in listed.stdout
    refused = studio_cli("testset", "build", "--workspace", ws.root, "--name", "x")
    assert refused.returncode == 2 and "needs --name and --kind" in refused.stderr


@pytest.mark.slow
def test_a_study_from_faces_x_prompts_x_models_without_clip_scored_by_two_annotators(eval_ws, tiny_faceid_spec):
    """The paper's human study: every face x designed prompts x every model generated as a run (no CLIP on
    the machine: evaluate's default ViT-L-14 cannot be loaded offline), every item to every annotator by
    default, resumed after a kill without regenerating, and Table 3 in the paper's layout."""
    from studio.codes import CRITERIA, StudyStatus
    from studio.human import studies as he
    from studio.human.design import EXAMPLE_PROMPTS, StudySettings, generate_study, read_prompts

    ws = eval_ws
    register_model(ws, tiny_faceid_spec)
    build_testset(ws, "faces", "fidelity", persons=["obama"], per_person=2)
    example = read_prompts(EXAMPLE_PROMPTS)
    assert len(example) >= 12 and not any(p.startswith("#") for p in example)
    prompts = [example[0], "a photo of a person wearing a hat"]
    s = StudySettings(action="generate", name="paper-study", faces="faces", prompts=prompts,
                      models=["tiny", "tiny-faceid"], annotators=["ann1", "ann2"], steps=2, width=64, height=64,
                      device="cpu")

    def killed(items, **_):
        for n, item in enumerate(items):
            if n == 3:
                raise KeyboardInterrupt
            yield item
    with pytest.raises(KeyboardInterrupt):
        execute(ws, "study", s.to_dict(), "tester", lambda h: generate_study(ws, s, h.run_id, "tester", track=killed))
    assert ws.store.study("paper-study") is None and len(ws.store.generations()) == 3

    # the same study from the command line: the 5 missing samples only, then the study (a draft)
    assert s.to_cli()[0] == "generate"  # the command the Runs tab shows is `python -m studio study generate ...`
    out = studio_cli("study", *s.to_cli(), "--workspace", ws.root, "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert (res["faces"], res["prompts"], res["samples"], res["generated"], res["reused"]) == (2, 2, 8, 5, 3)
    design = item_rows(ws, "paper-study (design)")
    assert sorted(r["prompt"] for r in design) == sorted(prompts * 2)
    assert {r["attribute"] for r in design} == {"smiling", "hat"}
    study = he.get_study(ws, "paper-study")
    assert study["items"] == 8 and study["per_item"] == 2  # every annotator scores everything by default
    again = studio_cli("study", *s.to_cli(), "--workspace", ws.root)
    assert again.returncode == 2 and "a study named 'paper-study' exists" in again.stderr

    he.set_status(ws, "paper-study", StudyStatus.OPEN)
    for annotator, base in (("ann1", 1), ("ann2", 2)):
        for position in range(1, 9):
            item = he.item_for(ws, study["id"], annotator, position)
            assert item["face_path"].startswith("media/") or item["face_path"].startswith("testsets/")
            he.save(ws, study["id"], annotator, position, {c: base + position % 3 for c in CRITERIA})
    res = he.results(ws, "paper-study")
    assert {r["model"] for r in res["table3"]} == {"tiny", "tiny-faceid"}
    assert all(r["n"] == 8 for r in res["table3"])  # 4 samples per model x 2 annotators
    md = (ws.root / he.export(ws, "paper-study")["table3.md"]).read_text()
    assert "| model | Customization Min | Customization Max | Customization Avg |" in md
    assert [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| tiny")][:2] == ["| tiny",
                                                                                                  "| tiny-faceid"]
