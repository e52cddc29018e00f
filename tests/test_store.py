"""The workspace database: versioned schema, WAL, all-or-nothing writes, resumable stages."""
from __future__ import annotations

import sqlite3

import pytest
from PIL import Image

from conftest import clone_ws, direct_counts, tallies
from studio.dataset.analyze import analyze
from studio.dataset.ingest import ingest
from studio.store import SCHEMA_VERSION, Store
from studio.workspace import Workspace


def test_schema_versioned_and_wal(tmp_path):
    store = Store(tmp_path / "studio.db")
    assert store.schema_version() == SCHEMA_VERSION
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # reopening migrates nothing and keeps data
    store.set_setting("k", {"a": 1})
    store.close()
    again = Store(tmp_path / "studio.db")
    assert again.get_setting("k") == {"a": 1}


def test_newer_schema_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "studio.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this studio"):
        Store(tmp_path / "studio.db")


def test_failed_write_leaves_nothing(tmp_path, photos):
    ws = Workspace.open(tmp_path / "ws")
    src = tmp_path / "src" / "obama"
    src.mkdir(parents=True)
    (src / "a.jpg").write_bytes(photos["obama"].read_bytes())
    ingest(ws, tmp_path / "src")
    image_id = ws.store.image_table()[0]["id"]
    good = {"bbox": [0, 0, 1, 1], "score": 0.9, "kps": [[0, 0]] * 5, "embedding": None, "area_ratio": 0.1}
    bad = {"bbox": [0, 0, 1, 1], "kps": [[0, 0]] * 5}  # no score: fails on the second face
    with pytest.raises(KeyError):
        ws.store.save_analysis(image_id, "pack", [good, bad], 0.1)
    assert ws.store.conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 0
    assert ws.store.conn.execute("SELECT COUNT(*) FROM analyses").fetchone()[0] == 0


class Interrupted(Exception):
    pass


def _stop_after(n):
    def progress(results, **_):
        for i, r in enumerate(results):
            if i == n:
                raise Interrupted
            yield r
    return progress


def test_interrupted_analysis_resumes(tmp_path, curation_source, pack):
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, curation_source)
    total = ws.store.counts()["images"]
    with pytest.raises(Interrupted):
        analyze(ws, pack=pack, progress=_stop_after(3), workers=2)
    assert ws.store.counts()["analyzed"] == 3  # committed one by one, before the interruption
    report = analyze(ws, pack=pack)
    assert report.skipped == 3 and report.analyzed == total - 3
    assert analyze(ws, pack=pack).analyzed == 0
    # another pack re-analyzes everything
    assert len(ws.store.images_to_analyze("another-pack")) == total


def test_interrupted_ingest_resumes(tmp_path, curation_source):
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(Interrupted):
        ingest(ws, curation_source, progress=_stop_after(4))
    assert ws.store.counts()["images"] == 4
    report = ingest(ws, curation_source)
    assert report.already == 4 and report.added == 5


def test_tallies_follow_every_write_of_a_real_pipeline(tmp_path, curated_ws, curation_source, pack, photos):
    """Statistics read tallies kept by triggers; after ingest, analysis, tagging, re-curation and a
    stale verdict they equal counting every row, and the statistics equal the direct counts."""

    from studio.dataset.curate import curate, curation_rules
    from studio.dataset.stats import dataset_stats

    ws = clone_ws(curated_ws, tmp_path / "ws")
    conn = ws.store.conn
    assert tallies(conn) == direct_counts(conn) and direct_counts(conn)["facet_tally"]
    ids = [r["id"] for r in ws.store.image_table()]
    ws.store.set_tags(ids[0], ["smiling", "glasses"])
    ws.store.set_tags(ids[1], ["smiling"])
    ws.store.set_tags(ids[0], ["glasses", "hat"])  # replaced: smiling goes, hat comes
    assert tallies(conn) == direct_counts(conn)
    before = dataset_stats(ws)
    curate(ws, curation_rules(ws, min_side=4000))  # every verdict flips to fail: tags move status too
    assert tallies(conn) == direct_counts(conn)
    after = dataset_stats(ws)
    assert after["table1"]["after_curation"]["images"] == 0 < before["table1"]["after_curation"]["images"]
    assert after["rejections_by_reason"]["low_resolution"] == len(ids)
    assert ws.store.tag_counts(passed_only=True) == [] and dict(ws.store.tag_counts()) == {"glasses": 1, "hat": 1,
                                                                                             "smiling": 1}
    # an analysis written after curation makes that verdict stale, and a re-curation clears it
    face = {"bbox": [0, 0, 9, 9], "score": 0.9, "kps": [[1, 1]] * 5, "embedding": None, "area_ratio": 0.2}
    ws.store.save_analysis(ids[2], pack.name, [face], 0.2)
    assert ws.store.stale_verdicts() == 1 and tallies(conn) == direct_counts(conn)
    assert [r["verdict_stale"] for r in ws.store.image_table(image_ids=[ids[2]])] == [True]
    new = tmp_path / "src" / "newcomer"
    new.mkdir(parents=True)
    Image.open(photos["biden"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new / "b.jpg")  # not a duplicate
    ingest(ws, tmp_path / "src")
    analyze(ws, pack=pack)
    curate(ws, curation_rules(ws, min_side=512))
    assert ws.store.stale_verdicts() == 0 and tallies(conn) == direct_counts(conn)
    counts = dict(conn.execute("SELECT p.name, COUNT(*) FROM browse b JOIN persons p ON p.id = b.person_id GROUP BY 1"))
    assert dict(ws.store.persons()) == counts and "newcomer" in counts
    status = dict(conn.execute("SELECT status, COUNT(*) FROM browse GROUP BY 1"))
    assert ws.store.status_counts() == status
