"""Human work is never lost, and data is about the right person: captions, reviews, exports, subjects, verdicts."""
from __future__ import annotations

import json
import shutil
import threading

import pytest
from oai_server import LocalOpenAI, Reply
from PIL import Image

from studio.captions import review
from studio.dataset.analyze import analyze
from studio.captions.captioner import CaptionSettings, caption_workspace
from studio.config import CurationRules
from studio.dataset.curate import curate
from studio.dataset.export import ExportError, export_training_set
from studio.dataset.ingest import ingest
from studio.dataset.stats import dataset_stats, image_list
from studio.store import StaleCaptionError
from studio.workspace import Workspace


@pytest.fixture()
def captioned(tmp_path, photos):
    """Three photos, each with a generated caption from model A."""
    src = tmp_path / "src"
    for name in ("obama", "obama2", "astronaut"):
        (src / name).mkdir(parents=True)
        shutil.copy(photos[name], src / name / photos[name].name)
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, src)
    with LocalOpenAI(lambda n, body: Reply(text="A person with short hair smiles.")) as server:
        caption_workspace(ws, CaptionSettings(base_url=server.url, model="model-a", max_retries=0), "sk-x", kept_only=False)
    return ws


def by_name(ws) -> dict[str, int]:
    return {r["source"].split("/")[-1].split(".")[0]: r["id"] for r in ws.store.image_table()}


def rerun(ws, **kw):
    with LocalOpenAI(lambda n, body: Reply(text="I'm sorry, I can't help with that.")) as server:
        return caption_workspace(ws, CaptionSettings(base_url=server.url, model="model-b", max_retries=0), "sk-x",
                                 kept_only=False, **kw)


def test_caption_rerun_keeps_approved_and_edited_captions(captioned):
    ws, ids = captioned, by_name(captioned)
    review.approve(ws, ids["obama"], 1, "rita")
    review.edit(ws, ids["obama2"], 1, "A man in a grey suit, mouth open.", "sam")
    report = rerun(ws)
    assert report.captioned == 3 and report.kept_reviewed == 2
    assert ws.store.current_caption(ids["obama"])["status"] == "approved"
    assert ws.store.current_caption(ids["obama"])["text"] == "A person with short hair smiles."
    assert ws.store.current_caption(ids["obama2"])["text"] == "A man in a grey suit, mouth open."
    # the machine's new answer is kept as a version to compare, not lost
    hist = ws.store.caption_history(ids["obama"])
    assert [(h["status"], h["model"]) for h in hist] == [("generated", "model-a"), ("approved", None), ("generated", "model-b")]
    # the unreviewed one takes the new caption, and review queues and browse agree on what is current
    assert ws.store.current_caption(ids["astronaut"])["text"].startswith("I'm sorry")
    queue = {r["image_id"]: r["version"] for r in ws.store.caption_queue()[0]}
    assert queue == {ids["obama"]: 2, ids["obama2"]: 2, ids["astronaut"]: 2}
    # asking to overwrite does overwrite
    with LocalOpenAI(lambda n, body: Reply(text="A smiling man.")) as server:
        over = caption_workspace(ws, CaptionSettings(base_url=server.url, model="model-c", max_retries=0), "sk-x",
                                 kept_only=False, overwrite_reviewed=True)
    assert over.kept_reviewed == 0 and ws.store.current_caption(ids["obama"])["text"] == "A smiling man."


def test_stale_review_is_refused_and_nothing_is_written(captioned):
    ws, i = captioned, by_name(captioned)["obama"]
    review.edit(ws, i, 1, "Edited by Sam.", "sam")  # Sam acted on version 1 first
    with pytest.raises(StaleCaptionError, match=r"you saw version 1, the current one is version 2 \(edited by sam\)"):
        review.approve(ws, i, 1, "rita")  # Rita still sees version 1
    with pytest.raises(StaleCaptionError):
        review.edit(ws, i, 1, "Rita's older text", "rita")
    cur = ws.store.current_caption(i)
    assert (cur["version"], cur["text"], cur["author"]) == (2, "Edited by Sam.", "sam")
    assert len(ws.store.caption_history(i)) == 2


def test_concurrent_approvals_of_one_version_write_once(captioned):
    ws, i = captioned, by_name(captioned)["obama2"]
    outcomes, barrier = [], threading.Barrier(6)

    def reviewer(k):
        barrier.wait()
        try:
            review.approve(ws, i, 1, f"reviewer{k}")
            outcomes.append("ok")
        except StaleCaptionError:
            outcomes.append("stale")

    threads = [threading.Thread(target=reviewer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok"] + ["stale"] * 5
    assert [h["status"] for h in ws.store.caption_history(i)] == ["generated", "approved"]


def test_review_during_regenerate_cannot_approve_unseen_text(captioned):
    ws, i = captioned, by_name(captioned)["astronaut"]
    from studio.captions.captioner import regenerate

    with LocalOpenAI(lambda n, body: Reply(text="A new text nobody reviewed.")) as server:
        regenerate(ws, i, CaptionSettings(base_url=server.url, model="model-a", max_retries=0), "sk-x", "bot")
    with pytest.raises(StaleCaptionError):
        review.approve(ws, i, 1, "rita")
    assert ws.store.current_caption(i)["status"] == "generated"


def test_export_uses_approved_captions_and_says_what_is_missing(captioned, tmp_path, pack):
    ws, ids = captioned, by_name(captioned)
    analyze(ws, pack=pack)
    curate(ws)
    kept = [r["id"] for r in image_list(ws) if r["status"] == "pass"]
    assert len(kept) == 3
    review.approve(ws, ids["obama"], 1, "rita")
    review.reject(ws, ids["obama2"], 1, "rita")

    def export(**kw):
        out = tmp_path / f"out_{len(list(tmp_path.glob('out_*')))}"
        result = export_training_set(ws, out, allow_other_pack=True, **kw)
        return result, {json.loads(x)["image_file"].split("/")[1]: json.loads(x)["additional_feature"]
                        for x in (out / "train.jsonl").read_text().splitlines()}

    result, lines = export()  # default: approved only; the others are kept with an empty caption and counted
    assert result["exported"] == 3 and result["without_caption"] == 2 and "2 exported image(s)" in result["warning"]
    assert sorted(lines.values()) == ["", "", "A person with short hair smiles."]
    result, lines = export(captions="unflagged")  # the unflagged machine caption counts, the rejected one never
    assert result["without_caption"] == 1 and lines["obama2"] == ""
    result, lines = export(missing_caption="skip")
    assert result["exported"] == 1 and result["skipped_without_caption"] == 2 and list(lines) == ["obama"]
    with pytest.raises(ExportError, match="2 of the images to export have no approved caption"):
        export_training_set(ws, tmp_path / "never", allow_other_pack=True, missing_caption="error")
    assert not (tmp_path / "never").exists()
    with pytest.raises(ExportError, match="not antelopev2"):
        export_training_set(ws, tmp_path / "never")


@pytest.fixture()
def group_ws(tmp_path, photos, pack):
    """Obama's folder holds a two-face photo in which Biden's face is the larger one."""
    src = tmp_path / "src"
    (src / "obama").mkdir(parents=True)
    for name in ("obama", "obama2", "obama_partial_face"):
        shutil.copy(photos[name], src / "obama" / photos[name].name)
    canvas = Image.new("RGB", (1800, 1100), (200, 200, 200))
    biden = Image.open(photos["biden"]).convert("RGB")
    biden = biden.crop((0, 0, biden.width, 700)).resize((900, 650))  # his face, large
    obama = Image.open(photos["obama"]).convert("RGB")
    obama.thumbnail((450, 450))  # the person of the folder, smaller
    canvas.paste(biden, (40, 40))
    canvas.paste(obama, (1100, 300))
    canvas.save(src / "obama" / "with_biden.jpg", quality=92)
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, src)
    analyze(ws, pack=pack)
    curate(ws, CurationRules(min_face_ratio=0.005))  # the composed photo's faces are small in it
    return ws


def test_subject_of_a_group_photo_is_the_person_not_the_largest_face(group_ws, tmp_path):
    ws = group_ws
    row = next(r for r in image_list(ws) if r["source"].endswith("with_biden.jpg"))
    faces = ws.store.faces(row["id"])
    assert row["face_count"] == 2 and faces[0].bbox[0] < 900  # the largest face is Biden's, on the left
    assert row["subject_face"] == 1 and faces[1].bbox[0] > 1000  # the subject is Obama's, on the right
    assert row["status"] == "pass" and not row["outlier"] and row["identity_sim"] > 0.5
    detail = __import__("studio.dataset.browse", fromlist=["image_detail"]).image_detail(ws, row["id"])
    assert detail["metadata"]["subject_face"] == 1 and "centroid" in detail["metadata"]["subject_chosen_by"]
    export_training_set(ws, tmp_path / "out", allow_other_pack=True)
    line = next(json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()
                if x and json.loads(x)["face_index"] == 1)
    assert line["bbox"] == [round(v, 2) for v in faces[1].bbox]
    from studio.models.generate import face_from_workspace

    face = face_from_workspace(ws, row["id"])
    assert face.bbox == faces[1].bbox and "subject chosen by curation" in face.note


def test_verdicts_made_before_an_analysis_are_reported_stale(group_ws, pack):
    ws = group_ws
    assert dataset_stats(ws)["stale_verdicts"] == 0
    target = image_list(ws)[0]["id"]
    faces = ws.store.faces(target)
    # analyze writes again after curate read (what a concurrent analyze does)
    ws.store.save_analysis(target, "bundled:again", [{"bbox": f.bbox, "score": f.score, "kps": f.kps,
                                                       "embedding": f.embedding, "area_ratio": f.area_ratio} for f in faces],
                           faces[0].area_ratio)
    assert dataset_stats(ws)["stale_verdicts"] == 1
    assert [r["verdict_stale"] for r in image_list(ws) if r["id"] == target] == [True]
    curate(ws)
    assert dataset_stats(ws)["stale_verdicts"] == 0
