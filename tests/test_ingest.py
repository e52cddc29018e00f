"""Ingest from the three layouts; every bad input gets a reason and the batch goes on."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from studio.dataset.analyze import analyze
from studio.images import MAX_PIXELS
from studio.dataset.ingest import ingest
from studio.dataset.stats import image_list
from studio.workspace import Workspace


def _save(img: Image.Image, path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


@pytest.fixture()
def messy_source(tmp_path, photos):
    """Person folders with one of each kind of bad input next to good photos."""
    src = tmp_path / "src"
    obama = Image.open(photos["obama"]).convert("RGB")
    (src / "obama").mkdir(parents=True)
    shutil.copy(photos["obama"], src / "obama" / "obama.jpg")
    shutil.copy(photos["obama2"], src / "obama" / "obama2.jpg")
    shutil.copy(photos["obama"], src / "obama" / "obama_again.jpg")  # duplicate content
    (src / "obama" / "notes.txt").write_text("not a photo")
    data = photos["obama3"].read_bytes()
    (src / "obama" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    side = int(MAX_PIXELS ** 0.5) + 100
    _save(Image.new("1", (side, side)), src / "obama" / "bomb.png")
    # awkward but valid encodings of a real face
    _save(obama.convert("CMYK"), src / "variants" / "cmyk.jpg", quality=95)
    _save(obama.convert("L"), src / "variants" / "gray.jpg", quality=95)
    rgba = obama.convert("RGBA")
    rgba.putalpha(200)
    _save(rgba, src / "variants" / "rgba.png")
    deep = (np.asarray(obama.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    _save(Image.fromarray(deep), src / "variants" / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(obama.rotate(90, expand=True), src / "variants" / "rotated.jpg", quality=95, exif=exif)
    # a nested folder in a person folder counts for that person
    shutil.copy(photos["astronaut"], _dir(src / "eileen_collins" / "2003") / "astronaut.png")
    # a dangling link (missing file) and a link loop (unreadable directory)
    os.symlink(src / "gone.jpg", src / "eileen_collins" / "gone.jpg")
    os.symlink("loop", src / "loop")
    (src / "stray.jpg").write_bytes(photos["biden"].read_bytes())  # not in a person folder
    return src


def _dir(p):
    p.mkdir(parents=True, exist_ok=True)
    return p


def _problems(ws) -> dict[str, str]:
    return {os.path.basename(p["source"]): p["code"] for p in ws.store.ingest_problems()}


def test_bad_inputs_recorded_and_batch_goes_on(tmp_path, messy_source):
    ws = Workspace.open(tmp_path / "ws")
    report = ingest(ws, messy_source)
    problems = _problems(ws)
    assert problems == {
        "notes.txt": "not_an_image",
        "truncated.jpg": "truncated",
        "bomb.png": "decompression_bomb",
        "obama_again.jpg": "duplicate",
        "gone.jpg": "missing_file",
        "loop": "unreadable_directory",
        "stray.jpg": "no_person",
    }
    details = {os.path.basename(p["source"]): p for p in ws.store.ingest_problems()}
    assert details["obama_again.jpg"]["duplicate_of"].endswith("obama.jpg")
    # every good photo made it, whatever its encoding
    assert report.added == 8
    rows = {os.path.basename(r["source"]): r for r in image_list(ws)}
    assert set(rows) == {"obama.jpg", "obama2.jpg", "cmyk.jpg", "gray.jpg", "rgba.png", "deep16.png",
                         "rotated.jpg", "astronaut.png"}
    assert rows["astronaut.png"]["person"] == "eileen_collins"
    assert rows["cmyk.jpg"]["original_mode"] == "CMYK"
    assert rows["rotated.jpg"]["exif_rotated"] and (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == (910, 1137)
    # the media store holds exactly the added photos, no temp or partial files
    media = [p for p in (ws.root / "media").rglob("*") if p.is_file()]
    assert len(media) == 8 and not [p for p in media if p.name.startswith(".")]


def test_awkward_encodings_are_analyzed_upright(tmp_path, messy_source, pack):
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, messy_source)
    analyze(ws, pack=pack)
    rows = {os.path.basename(r["source"]): r for r in image_list(ws)}
    for name in ("cmyk.jpg", "gray.jpg", "rgba.png", "deep16.png", "rotated.jpg"):
        assert rows[name]["face_count"] == 1, name
        assert rows[name]["face_ratio"] == pytest.approx(rows["obama.jpg"]["face_ratio"], rel=0.15), name
    assert rows["rotated.jpg"]["pose"] == "frontal"


def test_reingest_adds_nothing_and_retries_fixed_files(tmp_path, messy_source, photos):
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, messy_source)
    n_images = ws.store.counts()["images"]
    again = ingest(ws, messy_source)
    assert again.added == 0 and again.duplicates == 0
    assert again.already == n_images + 1  # + the duplicate, remembered as seen
    assert ws.store.counts()["images"] == n_images
    # a rejected file that gets fixed is picked up by the next run
    shutil.copy(photos["obama3"], messy_source / "obama" / "truncated.jpg")
    fixed = ingest(ws, messy_source)
    assert fixed.added == 1
    assert "truncated.jpg" not in _problems(ws)


def test_crossfaceid_jsonl(tmp_path, photos):
    root = tmp_path / "crossfaceid"
    shutil.copy(photos["obama"], _dir(root / "images" / "obama") / "0.jpg")
    shutil.copy(photos["biden"], _dir(root / "images" / "joe_biden") / "0.jpg")
    np.save(root / "obama0.npy", np.ones(512, dtype=np.float32))
    lines = [
        json.dumps({"image_file": "images/obama/0.jpg", "additional_feature": "A man smiling.",
                    "bbox": [1, 2, 3, 4], "landmarks": [[0, 0]] * 5, "insightface_feature_file": "obama0.npy"}),
        json.dumps({"image_file": "images/joe_biden/0.jpg", "additional_feature": "A man outdoors.", "person": "biden"}),
        "{this is not json",
        json.dumps({"image_file": "images/nobody/missing.jpg", "additional_feature": "x"}),
        json.dumps({"additional_feature": "no image"}),
        json.dumps(["a", "list"]),
    ]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    ws = Workspace.open(tmp_path / "ws")
    report = ingest(ws, root)  # a folder holding JSONL files
    assert report.added == 2
    rows = {r["person"]: r for r in image_list(ws)}
    assert set(rows) == {"obama", "biden"}  # parent folder name, else the record's person field
    assert rows["obama"]["caption"] == "A man smiling."
    meta = {r["person"]: r["import_meta"] for r in ws.store.image_table()}["obama"]
    assert meta["bbox"] == [1, 2, 3, 4] and len(meta["landmarks"]) == 5
    assert meta["insightface_feature_file"] == str(root / "obama0.npy")
    assert meta["jsonl"].endswith("train.jsonl:1")
    problems = {p["source"].split("/")[-1]: (p["code"], p["detail"]) for p in ws.store.ingest_problems()}
    assert problems["train.jsonl:3"][0] == "malformed_jsonl"
    assert problems["missing.jpg"][0] == "missing_file"
    assert problems["train.jsonl:5"] == ("missing_field", "no 'image_file' or 'file_name' field")
    assert problems["train.jsonl:6"][0] == "malformed_jsonl"


#: the line the official trainer's shell script (train_instantId_sdxl.sh) documents, paths made relative to a
#: data root as its ROOT_DATA_DIR / --data_root_path does
OFFICIAL_LINE = {
    "file_name": "train_data/images_part0/84634599103.jpg",
    "additional_feature": "myolv1,a man with glasses and a tie on posing for a picture in front of a window with a "
                          "building in the background, Andrew Law, johnson ting, a picture, mannerism",
    "bbox": [-31.329412311315536, 160.6865997314453, 496.19240215420723, 688.1674156188965],
    "landmarks": [[133.046875, 318], [319.3125, 318], [221.0625, 422], [153.515625, 535], [298.84375, 537]],
    "insightface_feature_file": "feature_data/images_part0/84634599103.bin"}


def test_the_official_jsonl_with_file_name_a_data_root_and_the_person(tmp_path, photos, capsys):
    from studio.cli import main

    root, lists = tmp_path / "data", tmp_path / "lists"
    shutil.copy(photos["obama"], _dir(root / "train_data" / "images_part0") / "84634599103.jpg")
    shutil.copy(photos["biden"], root / "train_data" / "images_part0" / "51.jpg")
    np.ones(512, dtype=np.float32).tofile(_dir(root / "feature_data" / "images_part0") / "84634599103.bin")
    second = {**OFFICIAL_LINE, "file_name": "train_data/images_part0/51.jpg"}
    _dir(lists)
    (lists / "CrossFaceID.jsonl").write_text(json.dumps(OFFICIAL_LINE) + "\n" + json.dumps(second) + "\n")
    ws = Workspace.open(tmp_path / "ws")
    report = ingest(ws, lists / "CrossFaceID.jsonl", data_root=root).as_dict()
    assert report["added"] == 2 and report["rejected"] == 0
    # no person in the line: the folder name, said out loud
    assert "2 JSONL line(s) name no person" in report["warning"] and "images_part0 (2)" in report["warning"]
    meta = ws.store.image_table()[0]["import_meta"]
    assert meta["insightface_feature_file"] == str(root / "feature_data/images_part0/84634599103.bin")
    assert meta["bbox"] == OFFICIAL_LINE["bbox"]
    ws2 = Workspace.open(tmp_path / "ws2")
    by_pattern = ingest(ws2, lists / "CrossFaceID.jsonl", data_root=root, person_pattern=r"/(?P<person>\d+)\.jpg$")
    assert by_pattern.added == 2 and "warning" not in by_pattern.as_dict()
    assert sorted(r["person"] for r in ws2.store.image_table()) == ["51", "84634599103"]
    with pytest.raises(ValueError, match="not a regular expression"):
        ingest(ws2, lists / "CrossFaceID.jsonl", person_pattern="(")
    # without the data root every line is rejected: the command says so and exits 1
    ws3 = tmp_path / "ws3"
    assert main(["ingest", str(lists / "CrossFaceID.jsonl"), "--workspace", str(ws3)]) == 1
    assert "error: nothing was added: 2 input(s) rejected (missing_file 2)" in capsys.readouterr().err
    assert main(["ingest", str(lists / "CrossFaceID.jsonl"), "--workspace", str(ws3), "--data-root", str(root),
                 "--person-column", "additional_feature"]) == 0


def test_csv_table(tmp_path, photos):
    shutil.copy(photos["obama"], tmp_path / "a.jpg")
    shutil.copy(photos["astronaut"], tmp_path / "b.png")
    pd.DataFrame({"file_name": ["a.jpg", "b.png", "c.jpg"], "person": ["obama", "eileen", "ghost"],
                  "caption": ["A man.", None, "x"]}).to_csv(tmp_path / "meta.csv", index=False)
    ws = Workspace.open(tmp_path / "ws")
    report = ingest(ws, tmp_path / "meta.csv")
    assert report.added == 2 and report.reasons == {"missing_file": 1}
    rows = {r["person"]: r for r in image_list(ws)}
    assert rows["obama"]["caption"] == "A man." and rows["eileen"]["caption"] is None


def test_hf_parquet_with_embedded_bytes(tmp_path, photos):
    df = pd.DataFrame({
        "image": [{"bytes": photos["obama"].read_bytes(), "path": "obama.jpg"},
                  {"bytes": b"garbage", "path": "bad.jpg"},
                  {"bytes": photos["astronaut"].read_bytes(), "path": "astronaut.png"}],
        "person": ["obama", "obama", "eileen"],
        "text": ["A man in a suit.", "x", "An astronaut."],
    })
    df.to_parquet(tmp_path / "train.parquet")
    ws = Workspace.open(tmp_path / "ws")
    report = ingest(ws, tmp_path / "train.parquet")
    assert report.added == 2
    assert report.reasons == {"not_an_image": 1}
    assert ws.store.ingest_problems()[0]["source"].endswith("train.parquet#row=1")
    rows = {r["person"]: r for r in image_list(ws)}
    assert rows["eileen"]["caption"] == "An astronaut."
    assert rows["eileen"]["media_path"].endswith(".png")
    assert ingest(ws, tmp_path / "train.parquet").added == 0


def test_table_without_file_column_is_a_clear_error(tmp_path):
    pd.DataFrame({"who": ["x"]}).to_csv(tmp_path / "meta.csv", index=False)
    ws = Workspace.open(tmp_path / "ws")
    report = ingest(ws, tmp_path / "meta.csv")
    assert report.reasons == {"missing_column": 1}
    assert "file column" in report.problems[0] and "meta.csv" in report.problems[0]


def test_unknown_source_type(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="x.txt"):
        ingest(Workspace.open(tmp_path / "ws"), tmp_path / "x.txt")


def test_jsonl_bad_fields_are_that_lines_problem(tmp_path, photos):
    """Wrong types and NUL bytes in one line: a reason for that line, the valid lines all ingested."""
    root = tmp_path / "jsonl"
    for i, name in enumerate(("obama", "obama2", "biden", "astronaut")):
        shutil.copy(photos[name], _dir(root / "images" / name) / f"{i}{photos[name].suffix}")
    good = [{"image_file": f"images/{n}/{i}{photos[n].suffix}", "additional_feature": f"caption {i}"}
            for i, n in enumerate(("obama", "obama2", "biden", "astronaut"))]
    bad = [
        {"image_file": 7}, {"image_file": ["a.jpg"]}, {"image_file": {"path": "a.jpg"}}, {"image_file": True},
        {"image_file": "images/obama/0.jpg\x00.png"},
        {"image_file": good[1]["image_file"], "additional_feature": {"text": "a dict"}},
        {"image_file": good[2]["image_file"], "insightface_feature_file": 3},
        {"image_file": good[3]["image_file"], "bbox": "1,2,3,4"},
        {"image_file": good[3]["image_file"], "person": ["x"]},
    ]
    lines = [good[0], *bad[:5], good[1], *bad[5:], good[2], good[3]]
    (root / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ws = Workspace.open(tmp_path / "ws")
    report = ingest(ws, root / "train.jsonl")
    assert report.added == 4 and report.rejected == len(bad)
    assert report.as_dict()["rejected_by_reason"] == {"bad_field": len(bad)}
    details = sorted(p["detail"] for p in ws.store.ingest_problems())
    assert "field 'image_file' must be a string, got int" in details
    assert "field 'image_file' must be a string, got array" in details
    assert "field 'image_file' must be a string, got object" in details
    assert "field 'image_file' must be a string, got boolean" in details
    assert "field 'image_file' contains a NUL byte" in details
    assert "field 'additional_feature' must be a string, got object" in details
    assert "field 'insightface_feature_file' must be a string, got int" in details
    # every problem names its line
    assert all(":" in p["source"] and p["source"].startswith(str(root)) for p in ws.store.ingest_problems())
    # no orphan media: exactly one file per stored image
    media = [p for p in (ws.root / "media").rglob("*") if p.is_file()]
    assert len(media) == ws.store.counts()["images"] == 4
    assert ingest(ws, root / "train.jsonl").added == 0  # the rerun neither crashes nor adds


def test_a_row_the_database_refuses_leaves_no_file(tmp_path, photos, monkeypatch):
    """A failure while storing one photo (here: the database refusing the row) removes its media file."""
    src = tmp_path / "src"
    for name in ("obama", "biden"):
        shutil.copy(photos[name], _dir(src / name) / photos[name].name)
    ws = Workspace.open(tmp_path / "ws")
    real = ws.store.add_image

    def refuse_biden(**kw):
        if kw["person"] == "biden":
            raise __import__("sqlite3").IntegrityError("refused for the test")
        return real(**kw)

    monkeypatch.setattr(ws.store, "add_image", refuse_biden)
    report = ingest(ws, src)
    assert report.added == 1 and report.as_dict()["rejected_by_reason"] == {"ingest_failed": 1}
    assert len([p for p in (ws.root / "media").rglob("*") if p.is_file()]) == 1


def test_two_ingests_of_one_source_at_once(tmp_path, photos):
    """Two processes ingesting the same folder: no crash, each photo once, no 'duplicate of itself'."""
    from conftest import studio_cli

    src = tmp_path / "src"
    for name in ("obama", "obama2", "obama3", "biden", "astronaut"):
        shutil.copy(photos[name], _dir(src / name) / photos[name].name)
    ws_dir = tmp_path / "ws"
    Workspace.open(ws_dir)
    procs = [studio_cli("ingest", src, "--workspace", ws_dir, "--json", "--workers", "1", background=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    reports = [json.loads(o[0]) for o in outs]
    assert sum(r["added"] for r in reports) == 5 and all(r["duplicates"] == 0 for r in reports)
    ws = Workspace.open(ws_dir)
    assert ws.store.counts()["images"] == 5 and ws.store.ingest_problems() == []


def test_links_to_one_file_and_directory_loops(tmp_path, photos):
    src = tmp_path / "src"
    shutil.copy(photos["obama"], _dir(src / "obama") / "obama.jpg")
    os.symlink(src / "obama" / "obama.jpg", src / "obama" / "link_a.jpg")
    os.symlink(src / "obama" / "obama.jpg", src / "obama" / "link_b.jpg")
    shutil.copy(photos["biden"], _dir(src / "biden" / "deep") / "biden.jpg")
    os.symlink(src / "biden", src / "biden" / "deep" / "up")  # a loop back to the person folder
    ws = Workspace.open(tmp_path / "ws")
    report = ingest(ws, src)
    assert report.added == 2 and report.duplicates == 0 and report.rejected == 0
    assert ws.store.ingest_problems() == []  # a link to the same file is not a duplicate of itself
    assert sum(report.reasons.values()) == report.rejected


@pytest.mark.parametrize("fmt, suffix", [("GIF", ".gif"), ("BMP", ".bmp"), ("TIFF", ".tif")])
def test_other_formats_keep_a_proper_extension(tmp_path, photos, fmt, suffix):
    src = tmp_path / "src"
    img = Image.open(photos["obama"]).convert("RGB")
    _save(img, _dir(src / "obama") / f"photo{suffix}", format=fmt)
    _save(img, src / "obama" / "no_extension", format=fmt)
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, src)
    paths = sorted(r["media_path"] for r in ws.store.image_table())
    assert len(paths) == 1 and paths[0].endswith(suffix)  # the second is the same content
    from studio.dataset.ingest import _suffix

    assert _suffix("", fmt) == suffix and _suffix(".weird", fmt) == suffix
