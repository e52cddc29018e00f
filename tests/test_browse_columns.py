"""The in-memory browse columns (millions of images) answer exactly what SQLite answers.

Workspaces here are small, so the snapshot is switched on from 0 rows; every filter kind, sort,
direction and page is compared with the SQLite path on the same workspace.
"""
from __future__ import annotations

import logging
import random

import numpy as np
import pytest

from conftest import clone_ws, wait_for
from studio.dataset.browse import SORTS, BrowseFilter, browse
from studio.codes import REASONS
from studio.dataset.curate import curate
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
    wait_for(lambda: holder.columns is not None and not holder.building, "the background build", interval=0.05)
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


def decoded(snap: columns.BrowseColumns) -> dict:
    """A snapshot's content independent of its text codes: what a full read and an update must share."""
    out = {}
    for name, _, kind in columns.COLUMNS:
        values = snap.cols[name]
        if kind == "text":
            inverse = {code: text for text, code in snap.codes[name].items()}
            values = np.array([inverse[c] for c in values], dtype=object)
        out[name] = values
    out["orders"] = {sort: snap.image_id[order] for sort, order in snap.orders.items()}
    out["tags"] = {tag: snap.image_id[pos] for tag, pos in snap.tags.items()}
    return out


def assert_same(a: columns.BrowseColumns, b: columns.BrowseColumns) -> None:
    da, db = decoded(a), decoded(b)
    assert a.version == b.version
    for name, _, _ in columns.COLUMNS:
        assert np.array_equal(da[name], db[name], equal_nan=da[name].dtype.kind == "f"), name
    assert da["orders"].keys() == db["orders"].keys()
    for sort in da["orders"]:
        assert np.array_equal(da["orders"][sort], db["orders"][sort]), sort
    assert da["tags"].keys() == db["tags"].keys()
    for tag in da["tags"]:
        assert np.array_equal(da["tags"][tag], db["tags"][tag]), tag


def full_read(ws: Workspace) -> columns.BrowseColumns:
    conn = ws.store.connect()
    conn.row_factory = None
    try:
        return columns.BrowseColumns.read(conn)
    finally:
        conn.close()


def test_updates_read_only_the_changed_rows_and_equal_a_full_read(synth, tmp_path, photos, pack):
    """Tag edits, a caption review, a re-curation that flips verdicts, a renamed person and new
    images: each update reads just the rows the change log names and gives the same snapshot
    as reading everything, and Browse from it the same pages as SQLite."""
    from studio.dataset.analyze import analyze
    from studio.config import CurationRules
    from studio.dataset.ingest import ingest

    ws = clone_ws(synth, tmp_path / "ws")
    store = ws.store
    store.browse_columns_min_rows = 0
    snap = store.browse_columns(wait=True)
    first = snap

    def update(expect_rows: int | None):
        nonlocal snap
        store.browse_columns_min_rows = 0
        newer = store.browse_columns(wait=True)
        assert newer is not None and newer is not snap and newer.version > snap.version
        assert newer.patched_rows == expect_rows
        assert_same(newer, full_read(ws))
        snap = newer
        rng = random.Random(newer.version)
        for _ in range(25):
            f = random_filter(rng, ws)
            cols, sql = pages_both_ways(ws, f, [1, 3], 9)
            assert cols == sql, f

    hatted = [int(i) for i in snap.image_id[snap.tags["hat"][:2]]]
    store.set_tags(hatted[0], ["hat", "brand new tag"])
    store.set_tags(hatted[1], [])
    update(2)
    orders_before = snap.orders
    store.add_caption(10, text="a zebra", status="approved", origin="human", author="ann")
    update(1)
    assert all(snap.orders[s] is orders_before[s] for s in orders_before)  # no sort key changed: none re-sorted
    curate(ws, CurationRules(min_side=800, min_face_ratio=0.1))
    update(_changed_since(store, snap.version, snap.rows))
    with store.transaction() as conn:
        conn.execute("UPDATE persons SET name = 'aaa renamed' WHERE name = 'p007'")
        store._refresh_browse(conn, [r[0] for r in conn.execute(
            "SELECT id FROM images WHERE person_id = (SELECT id FROM persons WHERE name = 'aaa renamed')")])
    update(_changed_since(store, snap.version, 10_000))
    src = tmp_path / "new"
    (src / "obama").mkdir(parents=True)
    for name in ("obama", "obama2"):
        (src / "obama" / f"{name}.jpg").write_bytes(photos[name].read_bytes())
    ingest(ws, src)
    analyze(ws, pack=pack)
    update(_changed_since(store, snap.version, 10_000))
    assert snap.rows == first.rows + 2


def _changed_since(store, version: int, at_most: int) -> int:
    n = store.conn.execute("SELECT COUNT(DISTINCT image_id) FROM browse_changes WHERE seq > ?", (version,)).fetchone()[0]
    assert 0 < n <= at_most
    return n


def test_a_log_that_no_longer_reaches_back_or_a_deleted_row_means_a_full_read(synth, tmp_path):
    ws = clone_ws(synth, tmp_path / "ws")
    store = ws.store
    store.browse_columns_min_rows = 0
    snap = store.browse_columns(wait=True)
    store.set_tags(3, ["glasses"])
    with store.transaction() as conn:  # the log keeps only its last rows: as if a million changes had passed
        conn.execute("DELETE FROM browse_changes WHERE seq <= ?", (snap.version + 1,))
    store.set_tags(5, ["glasses"])
    newer = store.browse_columns(wait=True)
    assert newer.patched_rows is None and newer.version > snap.version
    assert_same(newer, full_read(ws))
    with store.transaction() as conn:
        conn.execute("DELETE FROM images WHERE id = 9")  # its browse row and tags go with it
    newest = store.browse_columns(wait=True)
    assert newest.patched_rows is None and newest.rows == newer.rows - 1
    assert_same(newest, full_read(ws))
    # (the studio never deletes images, and the tallies assume so: a range filter is counted row by row)
    cols, sql = pages_both_ways(ws, BrowseFilter(sort="person", min_side=0), [1, 2], 10)
    assert cols == sql and 9 not in cols[0][2]


def test_caption_words_survive_a_tag_edit_but_not_a_caption_edit(synth, tmp_path, monkeypatch):
    ws = clone_ws(synth, tmp_path / "ws")
    store = ws.store
    store.browse_columns_min_rows = 0
    store.browse_columns(wait=True)
    asked = []
    fts_ids = store._fts_ids
    monkeypatch.setattr(store, "_fts_ids", lambda match: asked.append(match) or fts_ids(match))
    before = browse(ws, BrowseFilter(caption_text="zebra")).total
    store.set_tags(3, ["hat"])
    store.browse_columns(wait=True)
    assert browse(ws, BrowseFilter(caption_text="zebra")).total == before and asked == ['"zebra"*']
    store.add_caption(3, text="a zebra", status="approved", origin="human", author="ann")
    store.browse_columns(wait=True)
    assert browse(ws, BrowseFilter(caption_text="zebra")).total == before + 1 and asked == ['"zebra"*'] * 2
