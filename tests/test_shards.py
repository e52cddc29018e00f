"""Ingest from webdataset shards and img2dataset output, read in place (real tar files written here)."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import pandas as pd
import pytest
from conftest import REPO

from studio.dataset.ingest import ingest
from studio.dataset.stats import image_list
from studio.workspace import Workspace

CORRUPT = b"\xff\xd8\xff\xe0" + b"\x00" * 300  # a JPEG header and nothing decodable


def write_shard(path, samples: list[dict]) -> None:
    """A webdataset shard as the webdataset package writes one."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


def test_webdataset_shard_reasons_match_folder_ingest(tmp_path, photos):
    shard = tmp_path / "faces-000000.tar"
    write_shard(shard, [
        {"__key__": "obama/0001", "jpg": photos["obama"].read_bytes(), "txt": "A man in a suit."},
        {"__key__": "obama/0002", "jpg": photos["obama2"].read_bytes()},
        {"__key__": "x0003", "jpg": photos["biden"].read_bytes(), "json": json.dumps({"person": "biden"}).encode()},
        {"__key__": "biden/0004", "jpg": CORRUPT},
        {"__key__": "nobody", "jpg": photos["astronaut"].read_bytes()},
        {"__key__": "biden/0005", "txt": "no image here"},
    ])
    ws = Workspace.open(tmp_path / "ws")
    report = ingest(ws, shard)
    rows = {r["source"].split("#")[-1]: r for r in image_list(ws)}
    assert set(rows) == {"obama/0001", "obama/0002", "x0003"}
    assert rows["obama/0001"]["person"] == "obama" and rows["x0003"]["person"] == "biden"
    assert rows["obama/0001"]["caption"] == "A man in a suit." and rows["obama/0002"]["caption"] is None
    problems = {p["source"].split("#")[-1]: p["code"] for p in ws.store.ingest_problems()}
    assert problems["nobody"] == "no_person" and problems["biden/0005"] == "missing_image"
    # the same bytes as a file in a person folder get the same reason
    folder = tmp_path / "folder" / "biden"
    folder.mkdir(parents=True)
    (folder / "0004.jpg").write_bytes(CORRUPT)
    other = Workspace.open(tmp_path / "ws_folder")
    folder_report = ingest(other, tmp_path / "folder")
    assert report.reasons[problems["biden/0004"]] == 1 and dict(folder_report.reasons) == {problems["biden/0004"]: 1}
    assert report.added == 3 and report.rejected == 3
    # read in place: nothing unpacked next to the shard; a second ingest adds nothing
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["faces-000000.tar"]
    assert ingest(ws, shard).added == 0 and len(image_list(ws)) == 3
    # a person pattern on the key
    ws2 = Workspace.open(tmp_path / "ws2")
    ingest(ws2, shard, person_pattern=r"^(?P<person>[a-z]+)/")
    assert sorted(r["person"] for r in image_list(ws2)) == ["obama", "obama"]


def test_img2dataset_output_with_a_failed_download_and_a_truncated_shard(tmp_path, photos):
    out = tmp_path / "i2d"
    out.mkdir()
    write_shard(out / "00000.tar", [
        {"__key__": "000000000", "jpg": photos["obama"].read_bytes(), "txt": "A man smiling.",
         "json": json.dumps({"key": "000000000", "url": "https://example.org/a.jpg", "status": "success",
                             "person": "obama"}).encode()},
        {"__key__": "000000001", "jpg": photos["biden"].read_bytes(), "txt": "A man outdoors.",
         "json": json.dumps({"key": "000000001", "url": "https://example.org/b.jpg", "status": "success",
                             "person": "biden"}).encode()},
    ])
    pd.DataFrame({"key": ["000000000", "000000001", "000000002"],
                  "url": ["https://example.org/a.jpg", "https://example.org/b.jpg", "https://example.org/c.jpg"],
                  "caption": ["A man smiling.", "A man outdoors.", "gone"],
                  "status": ["success", "success", "failed_to_download"],
                  "error_message": [None, None, "HTTP Error 404: Not Found"],
                  "person": ["obama", "biden", "eileen"]}).to_parquet(out / "00000.parquet")
    # a second shard cut short in the middle of its second member
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, photo in (("000010000", "obama3"), ("000010001", "astronaut")):
            data = photos[photo].read_bytes()
            info = tarfile.TarInfo(f"{key}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = buf.getvalue()
    first = len(photos["obama3"].read_bytes())
    (out / "00001.tar").write_bytes(whole[: 512 + first + 512 + 2000])
    pd.DataFrame({"key": ["000010000", "000010001"], "status": ["success", "success"],
                  "person": ["obama", "eileen"]}).to_parquet(out / "00001.parquet")

    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "studio", "ingest", str(out), "--workspace", str(tmp_path / "ws"),
                           "--json"], cwd=REPO, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    result = report.get("result", report)
    assert result["added"] == 3
    assert result["rejected_by_reason"] == {"download_failed": 1, "unreadable_shard": 1}
    ws = Workspace.open(tmp_path / "ws")
    rows = {r["source"].split("#")[-1]: r for r in image_list(ws)}
    assert set(rows) == {"000000000", "000000001", "000010000"}
    assert rows["000000000"]["person"] == "obama" and rows["000000000"]["caption"] == "A man smiling."
    assert rows["000010000"]["person"] == "obama"  # from the sidecar parquet's column
    problems = {p["source"].split("/")[-1]: (p["code"], p["detail"]) for p in ws.store.ingest_problems()}
    failed = problems["00000.tar#000000002"]
    assert failed[0] == "download_failed" and "HTTP Error 404" in failed[1] and "c.jpg" in failed[1]
    assert any(code == "unreadable_shard" and "after 1 samples" in detail for code, detail in problems.values())


def test_person_pattern_is_for_shards_and_jsonl_only(tmp_path, photos):
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(ValueError, match="--person-pattern applies to webdataset .tar shards and JSONL files only"):
        ingest(ws, photos["obama"].parent.parent, person_pattern="(.*)")


def test_every_shard_member_that_is_not_ingested_has_a_reason(tmp_path, photos):
    """A key used twice with different photos, a hard link, a directory, a file without an extension, and
    persons named like paths: each is named with its reason, and the counts add up to the members read."""
    from test_guard import ODD_MEMBERS, ODD_REASONS, write_odd_shard

    shard = tmp_path / "odd.tar"
    write_odd_shard(shard, photos)
    ws = Workspace.open(tmp_path / "ws")
    report = ingest(ws, shard)
    assert report.added == 1 and dict(report.reasons) == ODD_REASONS
    assert report.added + report.duplicates + report.already + report.rejected == ODD_MEMBERS
    [row] = image_list(ws)
    assert row["person"] == "obama" and row["source"].endswith("#obama/0001")
    from studio.images import sha256_bytes

    assert row["sha256"] == sha256_bytes(photos["obama"].read_bytes())  # the first of the two, as the reason says
    problems = {(p["code"], p["source"].split("#", 1)[1].split("@")[0]) for p in ws.store.ingest_problems()}
    assert problems == {("not_a_file", "obama"), ("duplicate_key", "obama/0001.jpg"), ("not_a_file", "obama/0002.jpg"),
                        ("no_extension", "obama/README"), ("bad_person", "x1"), ("bad_person", "x2")}
    details = " ".join(p["detail"] for p in ws.store.ingest_problems())
    assert "'../../x': contains a path separator" in details and "'/etc/y'" in details and "a hard link" in details
    # read again: the one photo is already there, every problem is reported again, nothing is added
    again = ingest(ws, shard)
    assert again.added == 0 and again.already == 1 and dict(again.reasons) == ODD_REASONS
    assert not any(p.name in ("x", "y") for p in (ws.root).rglob("*"))
