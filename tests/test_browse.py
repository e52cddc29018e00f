"""Browse logic: filters, sorting, paging, detail, and clear errors for bad values."""
from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from conftest import clone_ws
from studio.dataset.browse import BrowseError, BrowseFilter, browse, filter_choices, image_detail
from studio.dataset.ingest import ingest
from studio.workspace import Workspace


def names(page) -> list[str]:
    return sorted(os.path.basename(r["media_path"]) for r in page.items)


def sources(ws, page) -> list[str]:
    by_id = {r["id"]: os.path.basename(r["source"]) for r in ws.store.image_table()}
    return sorted(by_id[r["image_id"]] for r in page.items)


def test_no_filter_pages_everything(curated_ws):
    first = browse(curated_ws, BrowseFilter(), page=1, page_size=4)
    assert first.total == 9 and first.pages == 3 and len(first.items) == 4
    ids = [r["image_id"] for p in (1, 2, 3) for r in browse(curated_ws, BrowseFilter(), page=p, page_size=4).items]
    assert len(ids) == len(set(ids)) == 9 and ids == sorted(ids)


@pytest.mark.parametrize("f, expected", [
    (BrowseFilter(persons=["obama"]), ["mislabelled.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg"]),
    (BrowseFilter(persons=["obama"], status="pass"), ["obama.jpg", "obama2.jpg"]),
    (BrowseFilter(status="fail", reason="low_resolution"), ["obama_partial_face.jpg", "yaoming.jpg"]),
    (BrowseFilter(reason="too_many_faces"), ["players.jpg"]),
    (BrowseFilter(outlier="yes"), ["mislabelled.jpg"]),
    (BrowseFilter(persons=["obama"], outlier="no"), ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg"]),
    (BrowseFilter(min_side=600), ["biden.jpg", "mislabelled.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg", "players.jpg"]),
    (BrowseFilter(max_side=512), ["astronaut.png", "obama_partial_face.jpg", "yaoming.jpg"]),
    (BrowseFilter(min_face_ratio=0.04, max_face_ratio=0.06), ["astronaut.png", "biden.jpg"]),
    (BrowseFilter(pose="looking up"), ["obama3.jpg"]),
    (BrowseFilter(persons=["biden", "eileen_collins"]), ["astronaut.png", "biden.jpg"]),
])
def test_filters(curated_ws, f, expected):
    assert sources(curated_ws, browse(curated_ws, f, page_size=50)) == expected


def test_sort_by_face_ratio(curated_ws):
    page = browse(curated_ws, BrowseFilter(sort="face_ratio", descending=True), page_size=50)
    ratios = [r["face_ratio"] for r in page.items]
    assert ratios == sorted(ratios, reverse=True)
    assert sources(curated_ws, browse(curated_ws, BrowseFilter(sort="face_ratio"), page_size=1)) == ["players.jpg"]


def test_tags_filter(curated_ws):
    rows = {os.path.basename(r["source"]): r["id"] for r in curated_ws.store.image_table()}
    curated_ws.store.set_tags(rows["obama.jpg"], ["smiling", "suit"])
    curated_ws.store.set_tags(rows["obama2.jpg"], ["suit"])
    try:
        assert sources(curated_ws, browse(curated_ws, BrowseFilter(tags=["suit"]))) == ["obama.jpg", "obama2.jpg"]
        assert sources(curated_ws, browse(curated_ws, BrowseFilter(tags=["suit", "smiling"]))) == ["obama.jpg"]
        assert "smiling" in filter_choices(curated_ws)["tags"]
    finally:
        curated_ws.store.set_tags(rows["obama.jpg"], [])
        curated_ws.store.set_tags(rows["obama2.jpg"], [])


def test_caption_search_and_status(tmp_path, photos):
    for name in ("obama", "obama2", "astronaut"):
        shutil.copy(photos[name], tmp_path / photos[name].name)
    pd.DataFrame({"file_name": ["obama.jpg", "obama2.jpg", "astronaut.png"], "person": ["o", "o", "e"],
                  "caption": ["A smiling man in a dark suit.", "A man speaking, mouth open.", None]}
                 ).to_csv(tmp_path / "meta.csv", index=False)
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, tmp_path / "meta.csv")
    assert sources(ws, browse(ws, BrowseFilter(caption_text="smil"))) == ["obama.jpg"]  # prefix match
    assert sources(ws, browse(ws, BrowseFilter(caption_text="man"))) == ["obama.jpg", "obama2.jpg"]
    assert sources(ws, browse(ws, BrowseFilter(caption_text='"smiling* (man'))) == ["obama.jpg"]  # FTS syntax is inert
    assert browse(ws, BrowseFilter(caption_text="astronaut")).total == 0
    assert sources(ws, browse(ws, BrowseFilter(caption_status="none"))) == ["astronaut.png"]
    assert sources(ws, browse(ws, BrowseFilter(caption_status="imported"))) == ["obama.jpg", "obama2.jpg"]


@pytest.mark.parametrize("f, page, message", [
    (BrowseFilter(min_face_ratio=1.5), 1, "face ratio minimum must be between 0.0 and 1.0"),
    (BrowseFilter(min_face_ratio=0.5, max_face_ratio=0.1), 1, "minimum 0.5 is above maximum 0.1"),
    (BrowseFilter(min_side=-3), 1, "at least 0"),
    (BrowseFilter(persons=["nobody"]), 1, "unknown person: nobody"),
    (BrowseFilter(reason="blurry"), 1, "unknown rejection reason 'blurry'"),
    (BrowseFilter(status="maybe"), 1, "status must be one of"),
    (BrowseFilter(sort="colour"), 1, "sort must be one of"),
])
def test_bad_filters_are_explained(curated_ws, f, page, message):
    with pytest.raises(BrowseError, match=message.replace("(", r"\(")):
        browse(curated_ws, f, page=page, page_size=4)


def test_detail_draws_faces_and_lists_the_person(curated_ws):
    row = next(r for r in curated_ws.store.image_table() if r["source"].endswith("/obama.jpg"))
    d = image_detail(curated_ws, row["id"])
    assert d["problem"] is None
    assert d["annotated"].size == (row["width"], row["height"])
    assert d["metadata"]["person"] == "obama" and len(d["metadata"]["faces"]) == 1
    assert len(d["metadata"]["faces"][0]["kps"]) == 5
    assert len(d["same_person"]) == 4  # the other obama-folder photos
    # pixels under the box outline changed (the drawing happened), pixels elsewhere did not
    from studio.images import load_rgb
    import numpy as np

    orig = load_rgb(curated_ws.media_path(row["media_path"])).rgb
    drawn = np.asarray(d["annotated"])
    x1, y1, x2, y2 = (int(round(v)) for v in d["metadata"]["faces"][0]["bbox"])
    assert (drawn[y1 + 1, x1 + 10:x2 - 10] != orig[y1 + 1, x1 + 10:x2 - 10]).any()
    assert (drawn[:20, :20] == orig[:20, :20]).all()


def test_detail_of_deleted_media_is_a_message(tmp_path, photos):
    (tmp_path / "src" / "p").mkdir(parents=True)
    shutil.copy(photos["obama"], tmp_path / "src" / "p" / "a.jpg")
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, tmp_path / "src")
    row = ws.store.image_table()[0]
    ws.media_path(row["media_path"]).unlink()
    d = image_detail(ws, row["id"])
    assert d["annotated"] is None
    assert "missing file" in d["problem"] and row["media_path"].split("/")[-1] in d["problem"]
    with pytest.raises(BrowseError, match="no image with id 999"):
        image_detail(ws, 999)


def test_deleted_media_shows_a_placeholder_in_the_gallery(tmp_path, photos):
    from studio.ui.access import StudioContext
    from studio.auth import AccessPolicy
    from studio.ui.browse import _gallery
    from studio.ui.media import MISSING

    (tmp_path / "src" / "p").mkdir(parents=True)
    shutil.copy(photos["obama"], tmp_path / "src" / "p" / "a.jpg")
    shutil.copy(photos["biden"], tmp_path / "src" / "p" / "b.jpg")
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, tmp_path / "src")
    gone = ws.store.image_table()[0]
    ws.media_path(gone["media_path"]).unlink()
    page = browse(ws, BrowseFilter())
    assert [r["media_missing"] for r in page.items] == [r["image_id"] == gone["id"] for r in page.items]
    summary, items, ids, _ = _gallery(StudioContext(ws, AccessPolicy("none")), page)
    missing = [(path, caption) for path, caption in items if "media file missing" in caption]
    assert missing == [(str(MISSING), f"#{gone['id']} p · pending · media file missing")]
    assert MISSING.is_file()


def test_counts_follow_writes_from_this_and_other_connections(tmp_path, curated_ws):
    """A filter's count is reused while paging, and never after a write, from any connection. One tag
    (with or without a status) is counted from the tag tally, which the triggers keep: the same."""
    ws = clone_ws(curated_ws, tmp_path / "ws")
    counted = BrowseFilter(tags=["hat"], min_side=0)  # a range: counted in SQL, then reused
    tallied = [BrowseFilter(tags=["hat"]), BrowseFilter(tags=["hat"], status="pass")]

    def totals():
        direct = [ws.store.conn.execute(
            f"""SELECT COUNT(*) FROM image_tags t JOIN browse b ON b.image_id = t.image_id
                WHERE t.tag = 'hat' {extra}""").fetchone()[0] for extra in ("", "AND b.status = 1")]
        assert [browse(ws, f).total for f in tallied] == direct
        return browse(ws, counted).total

    assert totals() == 0
    table = ws.store.image_table()
    ids = [next(r["id"] for r in table if r["passed"]), next(r["id"] for r in table if r["passed"] is False)]
    ws.store.set_tags(ids[0], ["hat"])  # this connection
    assert totals() == 1
    other = Workspace.open(tmp_path / "ws")  # another connection (another process would be the same)
    other.store.set_tags(ids[1], ["hat"])
    assert totals() == 2
    for f in (counted, tallied[0]):
        first, second = browse(ws, f, page=1, page_size=1), browse(ws, f, page=2, page_size=1)
        assert first.total == second.total == 2 and first.items[0]["image_id"] != second.items[0]["image_id"]
    other.store.set_tags(ids[0], [])
    assert browse(ws, counted, page=2, page_size=1).total == 1
    assert totals() == 1


@pytest.mark.parametrize("sort", ["id", "person", "face_ratio", "resolution", "identity_sim", "face_count"])
def test_every_page_in_every_sort_order_equals_one_sorted_list(curated_ws, sort):
    """Pages past the middle are read from the other end of the order, through the sort's own index:
    page by page they must give exactly SQLite's plain ORDER BY (NULLs first ascending)."""
    col = {"id": "image_id", "person": "person_name", "face_ratio": "face_ratio", "resolution": "min_side",
           "identity_sim": "identity_sim", "face_count": "face_count"}[sort]
    conn = curated_ws.store.conn
    for f, where in ((BrowseFilter(), "1"), (BrowseFilter(status="fail"), "status = 2"),
                     (BrowseFilter(status="pass", min_side=600), "status = 1 AND min_side >= 600")):
        for descending in (False, True):
            d = " DESC" if descending else ""
            expected = [r[0] for r in conn.execute(
                f"SELECT image_id FROM browse WHERE {where} ORDER BY {col}{d}, image_id{d}")]
            f.sort, f.descending = sort, descending
            first = browse(curated_ws, f, page=1, page_size=2)
            got = [r["image_id"] for p in range(1, first.pages + 1)
                   for r in browse(curated_ws, f, page=p, page_size=2).items]
            assert got == expected and first.total == len(expected), (f, got, expected)
    assert len(expected) >= 2
