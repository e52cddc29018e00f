"""The in-memory browse columns (millions of images) answer exactly what SQLite answers.

Workspaces here are small, so the snapshot is switched on from 0 rows; every filter kind, sort,
direction and page is compared with the SQLite path on the same workspace.
"""
from __future__ import annotations

import logging
import random
import time

import numpy as np
import pytest

from conftest import clone_ws
from studio.browse import SORTS, BrowseFilter, browse
from studio.codes import REASONS
from studio.curate import curate
from studio.store import columns
from studio.workspace import Workspace

WORDS = ["smiling", "neutral", "glasses", "beard", "hat", "outdoors", "suit", "laughing", "serious", "profile"]
POSES = ["frontal", "frontal", "side", "looking up", None]
TAGS = ["smiling", "glasses", "hat"]


def synthetic_ws(root, n: int = 1500, persons: int = 40, seed: int = 0) -> Workspace:
    """Images written through the store's own write path, then curated: NULL and equal sort keys
    (shared sides, faceless images), identity scores and outliers from random embeddings, tags,
    imported and reviewed captions, and persons in splits."""
    ws = Workspace.open(root)
    store, rng = ws.store, random.Random(seed)
    centres = np.random.default_rng(seed).normal(size=(persons, 16))
    with store.transaction():
        for i in range(n):
            p = rng.randrange(persons)
            image_id = store.add_image(
                source=f"synthetic://{i}", sha256=f"{i:064x}", person=f"p{p:03d}", media_path=f"media/s/{i}.jpg",
                width=rng.choice([300, 512, 800]), height=rng.choice([300, 512, 800]), original_mode="RGB",
                exif_rotated=False, import_caption=("A " + " ".join(rng.sample(WORDS, 4))) if rng.random() < 0.8 else None)
            n_faces = rng.choice([0, 1, 1, 1, 2, 4])
            ratio = round(rng.uniform(0.005, 0.2), 3)  # repeats: ties broken by image id
            emb = centres[p] + rng.gauss(0, 0.3) * np.random.default_rng(i).normal(size=16)
            if rng.random() < 0.05:
                emb = np.random.default_rng(i).normal(size=16)  # a mislabelled photo
            face = {"bbox": [0, 0, 10, 10], "score": 0.9, "kps": [[1, 1]] * 5, "embedding": emb / np.linalg.norm(emb),
                    "area_ratio": ratio, "yaw": 0.0, "pitch": 0.0, "pose": rng.choice(POSES)}
            if rng.random() < 0.03:
                store.save_analysis(image_id, "synthetic", None, None, error="unreadable")
            else:
                store.save_analysis(image_id, "synthetic", [face] * n_faces, ratio if n_faces else 0.0)
            if rng.random() < 0.5:
                store.set_tags(image_id, rng.sample(TAGS, rng.randint(1, 2)))
    curate(ws)
    with store.transaction():
        for image_id in range(1, n + 1, 7):
            store.add_caption(image_id, text=f"a {rng.choice(WORDS)} person", status="approved", origin="human",
                              author="ann")
    person_ids = [pid for _, pid in sorted(store.person_ids([f"p{p:03d}" for p in range(persons)]).items())]
    store.save_splits({pid: ["train", "validation", "test"][k % 3] for k, pid in enumerate(person_ids[:30])},
                      seed=0, run_id=None, replace=True)
    return ws


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_ws(tmp_path_factory.mktemp("ws_columns"))


def random_filter(rng: random.Random, ws: Workspace) -> BrowseFilter:
    f = BrowseFilter(sort=rng.choice(SORTS), descending=rng.random() < 0.5)
    if rng.random() < 0.3:
        f.persons = [f"p{rng.randrange(40):03d}" for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.4:
        f.status = rng.choice(["pass", "fail", "pending"])
    if rng.random() < 0.2:
        f.reason = rng.choice(REASONS)
    if rng.random() < 0.2:
        f.pose = rng.choice(["frontal", "side", "looking up", "nowhere"])
    if rng.random() < 0.3:
        f.tags = rng.sample(TAGS + ["unused"], rng.randint(1, 2))
    if rng.random() < 0.2:
        f.min_side, f.max_side = rng.choice([(None, 512), (512, None), (300, 300)])
    if rng.random() < 0.2:
        f.min_face_ratio, f.max_face_ratio = rng.choice([(0.04, None), (None, 0.1), (0.05, 0.05)])
    if rng.random() < 0.2:
        f.outlier = rng.choice(["yes", "no"])
    if rng.random() < 0.2:
        f.caption_text = " ".join(rng.sample(WORDS, rng.randint(1, 2)))[: rng.choice([4, 30])]
    if rng.random() < 0.15:
        f.caption_status = rng.choice(["none", "imported", "approved", "edited"])
    if rng.random() < 0.15:
        f.split = rng.choice(["train", "validation", "test", "unassigned"])
    return f


def pages_both_ways(ws: Workspace, f: BrowseFilter, pages: list[int], page_size: int) -> tuple[list, list]:
    store = ws.store
    store.browse_columns_min_rows = 0
    assert store.browse_columns(wait=True) is not None
    with_columns = [(browse(ws, f, page=p, page_size=page_size)) for p in pages]
    assert store.browse_columns() is not None  # nothing was written: the same snapshot answered
    store.browse_columns_min_rows = None
    with_sqlite = [(browse(ws, f, page=p, page_size=page_size)) for p in pages]
    key = [[(pg.total, pg.page, [r["image_id"] for r in pg.items]) for pg in got] for got in (with_columns, with_sqlite)]
    return key[0], key[1]


def test_random_filters_sorts_and_pages_equal_sqlite(synth):
    rng = random.Random(7)
    nonempty = 0
    for _ in range(120):
        f = random_filter(rng, synth)
        page_size = rng.choice([1, 7, 48])
        pages = [1, 2, rng.randint(1, 40), 10_000]
        cols, sql = pages_both_ways(synth, f, pages, page_size)
        assert cols == sql, f
        nonempty += cols[0][0] > 0
    assert nonempty > 60  # the filters are not all empty


@pytest.mark.parametrize("sort", SORTS)
def test_every_page_of_every_sort_equals_sqlite(synth, sort):
    """Whole orders, both directions: NULL keys first ascending and last descending, ties by id."""
    for descending in (False, True):
        for f in (BrowseFilter(), BrowseFilter(status="fail"), BrowseFilter(tags=["hat"], min_side=512)):
            f.sort, f.descending = sort, descending
            total = browse(synth, f, page_size=200).total
            pages = list(range(1, -(-total // 200) + 1))
            cols, sql = pages_both_ways(synth, f, pages, 200)
            assert cols == sql
            ids = [i for _, _, page in cols for i in page]
            assert len(ids) == len(set(ids)) == total > 100


def test_real_curated_workspace(curated_ws, tmp_path):
    """On the real photos' workspace (insightface faces, identity scores, outliers) too."""
    ws = clone_ws(curated_ws, tmp_path / "ws")
    image_ids = [r["image_id"] for r in browse(ws, BrowseFilter()).items]
    ws.store.set_tags(image_ids[0], ["hat"])
    for f in (BrowseFilter(sort="identity_sim"), BrowseFilter(sort="identity_sim", descending=True),
              BrowseFilter(outlier="no", sort="face_count"), BrowseFilter(outlier="yes"), BrowseFilter(tags=["hat"]),
              BrowseFilter(persons=["obama"], sort="face_ratio", descending=True), BrowseFilter(status="pass")):
        cols, sql = pages_both_ways(ws, f, [1, 2, 3], 2)
        assert cols == sql, f


def test_a_write_from_any_connection_retires_the_snapshot(synth, tmp_path):
    """The snapshot answers only while browse_version is what it was read with: after a tag or a
    caption written by this or another connection SQLite answers (right at once), and the next
    snapshot, built in the background, has the change."""
    ws = clone_ws(synth, tmp_path / "ws")
    ws.store.browse_columns_min_rows = 0
    snap = ws.store.browse_columns(wait=True)
    hats = browse(ws, BrowseFilter(tags=["hat"])).total
    target = next(r["image_id"] for r in browse(ws, BrowseFilter(tags=["hat"]), page_size=200).items)
    other = Workspace.open(tmp_path / "ws")
    other.store.set_tags(target, [])  # another connection
    assert ws.store.browse_columns() is None  # stale: not used
    assert browse(ws, BrowseFilter(tags=["hat"])).total == hats - 1
    fresh = ws.store.browse_columns(wait=True)
    assert fresh is not None and fresh is not snap and fresh.version > snap.version
    assert browse(ws, BrowseFilter(tags=["hat"])).total == hats - 1
    ws.store.add_caption(target, text="zebra", status="approved", origin="human", author="ann")  # this connection
    assert ws.store.browse_columns() is None
    assert browse(ws, BrowseFilter(caption_text="zebra")).total == 1


def test_stale_snapshot_is_rebuilt_in_the_background(synth, tmp_path):
    ws = clone_ws(synth, tmp_path / "ws")
    ws.store.browse_columns_min_rows = 0
    holder = columns.holder_for(str(ws.store.path.resolve()))
    assert ws.store.browse_columns() is None  # none yet: SQLite answers, a build starts
    for _ in range(200):
        if holder.columns is not None and not holder.building:
            break
        time.sleep(0.05)
    assert ws.store.browse_columns() is holder.columns is not None


def test_a_value_numpy_cannot_hold_leaves_browse_to_sqlite(synth, tmp_path, caplog):
    """A browse value of the wrong type (text in a number column) fails the snapshot, not Browse."""
    ws = clone_ws(synth, tmp_path / "ws")
    ws.store.browse_columns_min_rows = 0
    with ws.store.transaction() as conn:
        conn.execute("UPDATE browse SET face_ratio = 'n/a' WHERE image_id = 5")
    with caplog.at_level(logging.WARNING, logger="studio.store.columns"):
        assert ws.store.browse_columns(wait=True) is None
    assert "browse columns not built" in caplog.text and "n/a" in caplog.text
    page = browse(ws, BrowseFilter(sort="face_ratio", descending=True))
    assert page.items[0]["image_id"] == 5  # SQLite: text sorts after every number


def test_small_workspaces_keep_no_snapshot(synth):
    synth.store.browse_columns_min_rows = 10_000
    assert synth.store.browse_columns(wait=True) is None
    synth.store.browse_columns_min_rows = None
    assert synth.store.browse_columns(wait=True) is None


def test_caption_words_are_asked_of_fts5_once_per_snapshot(synth, tmp_path, monkeypatch):
    """Refining a caption filter or paging through it asks FTS5 only for new words; within the byte
    budget the most recently used words stay, and evicted ones are asked again, with the same result."""
    ws = clone_ws(synth, tmp_path / "ws")
    ws.store.browse_columns_min_rows = 0
    cols = ws.store.browse_columns(wait=True)
    asked = []
    fts_ids = ws.store._fts_ids
    monkeypatch.setattr(ws.store, "_fts_ids", lambda match: asked.append(match) or fts_ids(match))
    first = [browse(ws, BrowseFilter(caption_text="smil"), page=p, page_size=5).items for p in (1, 2)]
    both = browse(ws, BrowseFilter(caption_text="smil hat"))
    assert asked == ['"smil"*', '"hat"*']
    again = browse(ws, BrowseFilter(caption_text="hat smil"))
    assert len(asked) == 2 and again.total == both.total
    assert [r["image_id"] for r in again.items] == [r["image_id"] for r in both.items]
    assert [browse(ws, BrowseFilter(caption_text="smil"), page=p, page_size=5).items for p in (1, 2)] == first
    monkeypatch.setattr(columns, "CAPTION_CACHE_BYTES", 1)  # room for one word's rows only
    beards = browse(ws, BrowseFilter(caption_text="beard")).total
    assert asked[2:] == ['"beard"*'] and list(cols.caption_cache) == ['"beard"*']
    assert browse(ws, BrowseFilter(caption_text="smil hat")).total == both.total
    assert asked[3:] == ['"smil"*', '"hat"*']
    ws.store.browse_columns_min_rows = None
    assert browse(ws, BrowseFilter(caption_text="smil hat")).total == both.total > 0
    assert browse(ws, BrowseFilter(caption_text="beard")).total == beards > 0
