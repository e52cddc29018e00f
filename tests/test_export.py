"""The CrossFaceID training layout: written for kept images, and readable back by ingest."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from studio.dataset.export import export_training_set
from studio.dataset.ingest import ingest
from studio.dataset.stats import image_list
from studio.workspace import Workspace


def test_export_kept_images(curated_ws, tmp_path):
    out = tmp_path / "export"
    result = export_training_set(curated_ws, out, allow_other_pack=True)
    kept = [r for r in image_list(curated_ws) if r["status"] == "pass"]
    assert result["exported"] == len(kept) == 4
    lines = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert {line["person"] for line in lines} == {r["person"] for r in kept}
    by_sha = {r["sha256"][:16]: r for r in kept}
    for line in lines:
        assert set(line) == {"image_file", "additional_feature", "bbox", "landmarks", "insightface_feature_file", "person",
                             "face_pack", "face_index"}
        img = Image.open(out / line["image_file"])
        row = by_sha[line["image_file"].split("/")[-1].split(".")[0]]
        assert line["face_pack"].startswith("bundled:") and line["face_index"] == row["subject_face"]
        assert img.size == (row["width"], row["height"])
        emb = np.load(out / line["insightface_feature_file"])
        assert emb.shape == (512,) and emb.dtype == np.float32
        stored = curated_ws.store.faces(row["id"])[row["subject_face"]]
        np.testing.assert_array_equal(emb, stored.embedding)  # raw, not normalised, as InstantID reads it
        assert line["landmarks"] == stored.kps and len(line["bbox"]) == 4
    # exporting again rewrites the same content
    assert export_training_set(curated_ws, out, allow_other_pack=True) == result


def test_export_in_chunks_writes_the_same_and_a_cancel_leaves_no_half_file(curated_ws, tmp_path, monkeypatch):
    """At millions of images the export reads a chunk at a time: one image per chunk gives the same lines
    as one chunk; progress counts every kept image; a cancel midway leaves the previous train.jsonl whole."""
    import studio.dataset.export as export

    whole = tmp_path / "whole"
    export_training_set(curated_ws, whole, allow_other_pack=True)
    monkeypatch.setattr(export, "CHUNK", 1)
    seen = []

    def track(items, total=None, **_):
        seen.append(total)
        for n, item in enumerate(items, 1):
            seen.append(n)
            yield item

    chunked = tmp_path / "chunked"
    result = export_training_set(curated_ws, chunked, allow_other_pack=True, track=track)
    assert result["exported"] == 4
    assert sorted((whole / "train.jsonl").read_text().splitlines()) == sorted(
        (chunked / "train.jsonl").read_text().splitlines())
    assert seen[0] == seen[-1] == 4  # the tally's count of kept images, then each one looked at

    class Cancelled(Exception):
        pass

    def cancel_after_two(items, **_):
        for n, item in enumerate(items):
            if n == 2:
                raise Cancelled
            yield item

    before = (chunked / "train.jsonl").read_bytes()
    with pytest.raises(Cancelled):
        export_training_set(curated_ws, chunked, allow_other_pack=True, track=cancel_after_two)
    assert (chunked / "train.jsonl").read_bytes() == before
    assert not [p for p in chunked.iterdir() if p.name.startswith(".train.jsonl")]  # no temp file left


def test_export_round_trips_through_ingest(curated_ws, tmp_path):
    out = tmp_path / "export"
    export_training_set(curated_ws, out, allow_other_pack=True)
    ws2 = Workspace.open(tmp_path / "ws2")
    report = ingest(ws2, out / "train.jsonl")
    assert report.added == 4 and report.rejected == 0
    persons = sorted(r["person"] for r in image_list(ws2))
    assert persons == sorted(r["person"] for r in image_list(curated_ws) if r["status"] == "pass")
    assert {r["sha256"] for r in image_list(ws2)} <= {r["sha256"] for r in image_list(curated_ws)}


def test_exif_rotated_photo_exported_upright(tmp_path, photos, pack):
    from studio.dataset.analyze import analyze
    from studio.dataset.curate import curate

    obama = Image.open(photos["obama"]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "src" / "obama").mkdir(parents=True)
    obama.rotate(90, expand=True).save(tmp_path / "src" / "obama" / "phone.jpg", quality=95, exif=exif)
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, tmp_path / "src")
    analyze(ws, pack=pack)
    curate(ws)
    export_training_set(ws, tmp_path / "out", allow_other_pack=True)
    line = json.loads((tmp_path / "out" / "train.jsonl").read_text())
    assert line["image_file"].endswith(".png")
    exported = Image.open(tmp_path / "out" / line["image_file"])
    assert exported.size == obama.size and not exported.getexif().get(0x0112)
    x1, y1, x2, y2 = line["bbox"]
    assert x2 - x1 < y2 - y1 + 60 and 0 <= x1 < x2 <= obama.width and 0 <= y1 < y2 <= obama.height


def test_hf_export_loads_with_datasets_and_has_a_card(curated_ws, tmp_path):
    import datasets

    from studio.dataset.hf_export import export_hf

    out = tmp_path / "hf"
    result = export_hf(curated_ws, out, include_failed=True, captions="any", allow_other_pack=True)
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train",
                               cache_dir=str(tmp_path / "hf_cache"))  # datasets' own reader, offline
    table = {r["id"]: r for r in curated_ws.store.image_table()}
    with_face = {i for i, r in table.items() if curated_ws.store.subject_face(i) is not None}
    assert len(ds) == result["rows"] == len(with_face) and result["kept"] == 4
    for col in ("image", "person", "caption", "caption_status", "passed", "reasons", "face_bbox", "keypoints",
                "embedding", "pose", "face_pack"):
        assert col in ds.column_names, ds.column_names
    for row in ds:
        stored = table[row["studio_image_id"]]
        face = curated_ws.store.subject_face(row["studio_image_id"])
        assert row["person"] == stored["person"] and row["passed"] == bool(stored["passed"])
        assert row["image"].size == (stored["width"], stored["height"])
        np.testing.assert_allclose(row["embedding"], face.embedding, rtol=1e-6)
        assert len(row["keypoints"]) == 5 and row["face_bbox"] == pytest.approx(list(face.bbox), abs=0.01)
        assert row["passed"] or row["reasons"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: other") and f"{result['rows']} photo(s) of {result['persons']} person(s)" in card
    assert "at least 512 px" in card and "4% of the photo" in card and "bundled" in card


def test_hf_push_without_a_token_is_refused_before_writing(curated_ws, tmp_path, monkeypatch, capsys):
    from studio.runs.stages import ExportSettings, stage

    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login either
    s = ExportSettings.from_dict({"out": str(tmp_path / "hf"), "format": "hf", "push_to_hub": "me/faces",
                                  "allow_other_pack": True})
    with pytest.raises(ValueError, match="no Hugging Face token"):
        stage("export").check_start(curated_ws, s)
    assert not (tmp_path / "hf").exists()
    from studio.cli import main

    code = main(["export", "--workspace", str(curated_ws.root), "--out", str(tmp_path / "hf"), "--format", "hf",
                 "--push-to-hub", "me/faces", "--allow-other-pack"])
    assert code == 2 and "no Hugging Face token" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    with pytest.raises(ValueError, match="push_to_hub needs format hf"):
        ExportSettings.from_dict({"out": str(tmp_path / "x"), "push_to_hub": "me/faces"})
