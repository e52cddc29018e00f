"""Person splits, cross-training pairs and their manifest, on real photos analysed by the bundled face pack."""
from __future__ import annotations

import json
import re
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_ws, studio_cli

from studio.dataset.export import ExportError
from studio.train.pairs import PairingError, assign_splits, export_manifest, make_pairs, parse_shares

PINS = {"obama": "train", "eileen_collins": "train", "biden": "test"}


@pytest.fixture
def ws(pairs_ws_template, tmp_path):
    return copy_ws(pairs_ws_template, tmp_path / "ws")


def names(ws) -> dict[int, str]:
    return {r["id"]: Path(r["source"]).name for r in ws.store.image_table()}


def test_split_is_over_persons_seeded_and_stable(ws):
    first = assign_splits(ws, seed=3)
    assert sorted(r["split"] for r in first["splits"]) == ["test", "train", "validation"]  # 3 persons, one each
    before = ws.store.splits()
    again = assign_splits(ws, seed=99)  # a stored split stays: moving persons later would leak test faces
    assert ws.store.splits() == before and again["assigned"] == 0
    assign_splits(ws, seed=3, reassign=True)
    assert ws.store.splits() == before  # same seed, same split
    # every image of a person shares the person's split
    for row in ws.store.split_counts():
        assert row["split"] != "unassigned"


def test_pins_and_moves_need_reassign(ws):
    assign_splits(ws, pins=PINS)
    assert ws.store.splits() == PINS
    with pytest.raises(PairingError, match="obama already belong"):
        assign_splits(ws, pins={"obama": "test"})
    with pytest.raises(PairingError, match="nobody"):
        assign_splits(ws, pins={"nobody": "test"})
    assign_splits(ws, pins={"obama": "test", "biden": "train"}, reassign=True)
    assert ws.store.splits()["obama"] == "test"
    for bad in ("0.5,0.5", "a,b,c", "0.9,0.2,0.1", "0,0.5,0.5"):
        with pytest.raises(PairingError, match="shares"):
            parse_shares(bad)


def test_pairs_rules_and_planted_near_duplicate(ws):
    with pytest.raises(PairingError, match="split` first"):
        make_pairs(ws)
    assign_splits(ws, pins=PINS)
    result = make_pairs(ws, per_image=2)
    by_id = names(ws)
    pairs = ws.store.pairs("train")
    persons = {r["id"]: r["person"] for r in ws.store.image_table()}
    assert pairs and all(p["target_id"] != p["face_id"] for p in pairs)
    assert all(persons[p["target_id"]] == persons[p["face_id"]] for p in pairs)
    # biden is a test person: never in a pair, although he has two kept photos
    assert not {persons[p["target_id"]] for p in pairs} & {"biden"}
    # the re-encoded, slightly cropped copy of obama.jpg is never paired with it, either way round
    named = {(by_id[p["target_id"]], by_id[p["face_id"]]) for p in pairs}
    assert ("obama.jpg", "obama_copy.jpg") not in named and ("obama_copy.jpg", "obama.jpg") not in named
    assert result["excluded_near_duplicates"] == 2 and result["excluded_by"] == {"phash": 2}
    # obama has 4 kept photos: each target gets 2 others, the copy counting as the same photo
    assert result["pairs"] == 8 and result["pairs_per_person"] == {"obama": 8}
    assert {"person": "eileen_collins", "reason": "one_usable_image"}.items() <= result["left_out_persons"][0].items()
    assert sum(result["pose_change"].values()) == 8 and "pose_transitions" in result
    with pytest.raises(PairingError, match="test persons"):
        make_pairs(ws, split="test")


def test_reframed_crop_is_caught_by_the_face_hash(ws):
    """biden_crop.jpg re-frames biden.jpg: whole-photo hashes differ, the face boxes match."""
    assign_splits(ws, pins={**PINS, "biden": "validation"})
    result = make_pairs(ws, split="validation")
    assert result["pairs"] == 0 and result["excluded_by"] == {"face_phash": 2}
    assert result["left_out_persons"][0]["reason"] == "only_near_duplicates"
    # with the hash and cosine checks off the two would be paired: the check is what excludes them
    loose = make_pairs(ws, split="validation", max_hash_distance=-1, max_face_cos=1.01)
    assert loose["pairs"] == 2


def test_contrast_prefers_another_pose(ws):
    assign_splits(ws, pins=PINS)
    make_pairs(ws, strategy="contrast", seed=1)
    by_id = names(ws)
    rows = ws.store.pairs("train")
    # obama3_crop is the only 'looking up' photo: every frontal target is paired with it
    frontal = [r for r in rows if r["target_pose"] == "frontal"]
    assert frontal and all(by_id[r["face_id"]] == "obama3_crop.jpg" for r in frontal)
    random_rows = (make_pairs(ws, strategy="random", seed=1), ws.store.pairs("train"))[1]
    assert {(r["target_id"], r["face_id"]) for r in random_rows} != {(r["target_id"], r["face_id"]) for r in rows}


def test_manifest_layout_and_caption_choices(ws, tmp_path):
    assign_splits(ws, pins=PINS)
    make_pairs(ws)
    with pytest.raises(ExportError, match="no approved caption"):
        export_manifest(ws, tmp_path / "e", missing_caption="error", allow_other_pack=True)
    assert not (tmp_path / "e" / "train.jsonl").exists()
    with pytest.raises(ExportError, match="not antelopev2"):
        export_manifest(ws, tmp_path / "p", missing_caption="template")
    skipped = export_manifest(ws, tmp_path / "s", allow_other_pack=True)
    assert skipped["lines"] == 0 and skipped["skipped_without_caption"] == 4 and "left out" in skipped["warning"]
    # one approved caption: that line keeps it, the others fall back to the stated template
    target = ws.store.pairs("train")[0]["target_id"]
    ws.store.add_caption(target, "A man smiling broadly.", status="approved", origin="human", author="ann")
    out = tmp_path / "m"
    result = export_manifest(ws, out, missing_caption="template", template="a portrait photo", allow_other_pack=True)
    assert result["lines"] == 4 and result["template_captions"] == 3
    lines = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    table = {r["id"]: r for r in ws.store.image_table()}
    for line in lines:
        assert line["target_id"] != line["face_id"]
        assert (out / line["image_file"]).is_file() and (out / line["face_image_file"]).is_file()
        emb = np.load(out / line["insightface_feature_file"])
        # the embedding is the PAIRED face j's, not the target's
        assert np.allclose(emb, ws.store.subject_face(line["face_id"]).embedding)
        assert not np.allclose(emb, ws.store.subject_face(line["target_id"]).embedding)
        assert line["bbox"] == [round(v, 2) for v in ws.store.subject_face(line["target_id"]).bbox]
        assert len(line["landmarks"]) == 5
        expected = "A man smiling broadly." if line["target_id"] == target else "a portrait photo"
        assert line["additional_feature"] == expected
        assert line["caption_source"] == ("caption" if line["target_id"] == target else "template")
        assert table[line["target_id"]]["person"] == line["person"] == "obama"
    side = json.loads((out / "train.manifest.json").read_text())
    assert side["data_sha256"] == result["data_sha256"] and side["split"] == "train"
    # the folder says how the official trainer reads it: --data_root_path joined with each line's paths
    readme = (out / "README.md").read_text()
    root = re.search(r"--data_root_path (\S+)", readme).group(1)
    assert root == str(out.resolve()) and f"--data_json_file {(out / 'train.jsonl').resolve()}" in readme
    assert all(os.path.isfile(os.path.join(root, line[k])) for line in lines
               for k in ("image_file", "insightface_feature_file"))
    absolute = export_manifest(ws, tmp_path / "abs", missing_caption="template", allow_other_pack=True,
                               paths="absolute")
    abs_lines = [json.loads(x) for x in (tmp_path / "abs" / "train.jsonl").read_text().splitlines()]
    assert absolute["lines"] == 4 and "--data_root_path / " in absolute["official_command"]
    for line in abs_lines:
        assert all(os.path.isabs(line[k]) and os.path.isfile(line[k])
                   for k in ("image_file", "insightface_feature_file", "face_image_file"))
    with pytest.raises(ExportError, match="relative or absolute"):
        export_manifest(ws, tmp_path / "x", missing_caption="template", allow_other_pack=True, paths="url")


def test_manifest_to_an_unwritable_dir_names_it(ws, tmp_path):
    assign_splits(ws, pins=PINS)
    make_pairs(ws)
    blocker = tmp_path / "a_file"  # a file where a folder must go: refused even for root
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot write the manifest to .*a_file/out"):
        export_manifest(ws, blocker / "out", missing_caption="template", allow_other_pack=True)


def test_cli_split_pairs_manifest_are_runs(ws, tmp_path):
    def cli(*args):
        return studio_cli(*args, "--workspace", ws.root, "--json", timeout=120)

    r = cli("pairs")
    assert r.returncode == 2 and "split` first" in r.stderr
    r = cli("split", "--person", "obama=train", "--person", "eileen_collins=train", "--person", "biden=test")
    assert r.returncode == 0, r.stderr
    r = cli("pairs", "--per-image", "2")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pairs"] == 8
    r = cli("manifest", "--out", str(tmp_path / "m"), "--missing-caption", "template", "--allow-other-pack")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["lines"] == 8 and "template" in r.stderr
    kinds = [x["kind"] for x in ws.store.runs()]
    assert kinds[:3] == ["manifest", "pairs", "split"] and all(x["status"] == "done" for x in ws.store.runs()[:3])
    assert {p["run_id"] for p in ws.store.pairs("train")} == {ws.store.runs(kind="pairs")[0]["id"]}


def test_split_shows_in_browse_and_statistics(ws):
    from studio.dataset.browse import BrowseError, BrowseFilter, browse, image_detail
    from studio.dataset.stats import dataset_stats

    assert "table1_by_split" in dataset_stats(ws) and dataset_stats(ws)["table1_by_split"] == {}
    assert browse(ws, BrowseFilter(split="unassigned")).total == len(ws.store.image_table())
    assign_splits(ws, pins=PINS)
    persons = {r["id"]: r["person"] for r in ws.store.image_table()}
    test_page = browse(ws, BrowseFilter(split="test"))
    assert test_page.total == 2 and {persons[r["image_id"]] for r in test_page.items} == {"biden"}
    assert {persons[r["image_id"]] for r in browse(ws, BrowseFilter(split="train")).items} == {"obama", "eileen_collins"}
    assert image_detail(ws, test_page.items[0]["image_id"])["metadata"]["split"] == "test"
    with pytest.raises(BrowseError, match="split must be one of"):
        browse(ws, BrowseFilter(split="holdout"))
    t = dataset_stats(ws)["table1_by_split"]
    assert set(t) == {"train", "test"} and t["train"]["persons"] == 2 and t["train"]["images"] == 5
    assert t["test"] == {"persons": 1, "images": 2, "avg_per_person": 2.0, "median_per_person": 2.0,
                         "max_per_person": 2, "min_per_person": 2}


def test_a_photo_gone_from_disk_is_that_pair_s_problem(ws, tmp_path):
    """Pairing leaves out a photo it cannot read; a manifest skips a pair whose photo went missing since."""
    assign_splits(ws, pins=PINS)
    by_name = {v: k for k, v in names(ws).items()}
    table = {r["id"]: r for r in ws.store.image_table()}
    gone = ws.media_path(table[by_name["obama2.jpg"]]["media_path"])
    kept = gone.read_bytes()
    gone.unlink()
    result = make_pairs(ws, per_image=2)
    assert {"image_id": by_name["obama2.jpg"], "reason": "unreadable"}.items() <= result["left_out_images"][0].items()
    assert all(by_name["obama2.jpg"] not in (p["target_id"], p["face_id"]) for p in ws.store.pairs("train"))
    assert result["pairs"] == 4  # obama and its copy each get only obama3_crop; obama3_crop gets both
    gone.write_bytes(kept)
    make_pairs(ws, per_image=2)
    assert result["pairs"] < len(ws.store.pairs("train")) == 8
    # the photo disappears after pairing: the manifest skips its pairs, names them, writes the rest whole
    gone.unlink()
    out = export_manifest(ws, tmp_path / "m", missing_caption="template", allow_other_pack=True)
    lines = [json.loads(x) for x in (tmp_path / "m" / "train.jsonl").read_text().splitlines()]
    assert out["lines"] == len(lines) == 8 - len(out["skipped_unreadable"]) and 0 < len(out["skipped_unreadable"]) < 8
    assert all(by_name["obama2.jpg"] in (s["target_id"], s["face_id"]) for s in out["skipped_unreadable"])
    assert all((tmp_path / "m" / x["image_file"]).is_file() and (tmp_path / "m" / x["face_image_file"]).is_file()
               for x in lines)
    assert "could not be read" in out["warning"]


def test_a_manifest_with_face_candidates_draws_a_face_per_epoch(ws, tmp_path):
    """--candidates: one line per target listing every paired face; the trainer draws one per epoch (seeded:
    the same epoch draws the same face, so a resumed run trains on what the straight run did)."""
    from training.data import PairDataset, read_manifest

    assign_splits(ws, pins=PINS)
    made = make_pairs(ws, per_image=3)
    targets = {p["target_id"] for p in ws.store.pairs("train")}
    result = export_manifest(ws, tmp_path / "c", missing_caption="template", allow_other_pack=True, candidates=True)
    assert result["lines"] == len(targets) < made["pairs"]  # a line per target, not per pair
    lines = [json.loads(x) for x in (tmp_path / "c" / "train.jsonl").read_text().splitlines()]
    assert sorted(line["target_id"] for line in lines) == sorted(targets)  # one line per target
    for line in lines:
        assert line["face_candidates"][0] == line["insightface_feature_file"]  # readers of the plain layout see one
        assert len(line["face_candidates"]) == len(line["face_ids"]) >= 2
        assert line["target_id"] not in line["face_ids"]
        for file, face_id in zip(line["face_candidates"], line["face_ids"]):
            assert np.allclose(np.load(tmp_path / "c" / file), ws.store.subject_face(face_id).embedding)
    samples = read_manifest(tmp_path / "c" / "train.jsonl")
    data = PairDataset(samples, 64, seed=1)
    drawn = []
    for epoch in range(6):
        data.epoch = epoch
        first = data[0]["face_embed"]
        assert torch.equal(first, data[0]["face_embed"])  # the same epoch: the same face
        drawn.append(first)
    assert len({tuple(t.tolist()[:4]) for t in drawn}) >= 2  # other epochs: other faces of the person
