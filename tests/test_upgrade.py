"""Workspaces written by earlier studio versions (schema v1-v4, v9, v10) open, upgrade and work like fresh ones."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import USERS, direct_counts, running_app, tallies

from studio.dataset.analyze import analyze
from studio.dataset.browse import BrowseFilter, browse, image_detail
from studio.dataset.curate import curate
from studio.dataset.export import export_training_set
from studio.dataset.ingest import ingest
from studio.captions.review import approve
from studio.dataset.stats import dataset_stats
from studio.store import SCHEMA_VERSION
from studio.workspace import Workspace

OLD = Path(__file__).parent / "data" / "old_workspaces"


def upgraded(version: int, dest: Path) -> Workspace:
    dest.mkdir(parents=True)
    shutil.copy(OLD / f"v{version}.db", dest / "studio.db")
    shutil.copytree(OLD / "media", dest / "media")
    return Workspace.open(dest)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, pack) -> Workspace:
    """The same photos, persons and captions through today's ingest -> analyze -> curate."""
    ws = upgraded(1, tmp_path_factory.mktemp("probe") / "ws")
    rows = ws.store.image_table()
    src = tmp_path_factory.mktemp("fresh_src")
    pd.DataFrame({"file_name": [str(ws.media_path(r["media_path"])) for r in rows],
                  "person": [r["person"] for r in rows],
                  "caption": [r["import_caption"] for r in rows]}).to_csv(src / "meta.csv", index=False)
    new = Workspace.open(tmp_path_factory.mktemp("fresh") / "ws")
    ingest(new, src / "meta.csv")
    analyze(new, pack=pack)
    curate(new)
    return new


@pytest.mark.parametrize("version", [1, 2, 3, 4, 9, 10])
def test_old_workspace_upgrades_and_matches_a_fresh_one(version, fresh, tmp_path):
    ws = upgraded(version, tmp_path / "ws")
    assert ws.store.schema_version() == SCHEMA_VERSION
    # the statistics' tallies start equal to counting every row, and stale verdicts are still found
    # (v9 was re-analysed after curation)
    assert tallies(ws.store.conn) == direct_counts(ws.store.conn)
    assert ws.store.stale_verdicts() == (5 if version == 9 else 0)
    old, new = dataset_stats(ws), dataset_stats(fresh)
    assert old["table1"] == new["table1"]
    assert old["rejections_by_reason"] == new["rejections_by_reason"] == {"low_resolution": 1, "small_face": 1}
    # reason filters find the rejected photo (v1 verdicts had no reason bits)
    assert browse(ws, BrowseFilter(reason="small_face")).total == 1
    assert browse(ws, BrowseFilter(status="pass")).total == 4
    # every image's caption is reviewable (captions imported before v3 became caption rows)
    queue, total = ws.store.caption_queue()
    assert total == 5 and {r["image_id"] for r in queue} == {r["id"] for r in ws.store.image_table()}
    flagged = [r for r in queue if r["flags"]]
    assert [f["flags"] for f in flagged] == [["structured"]]
    assert browse(ws, BrowseFilter(caption_text="spacesuit")).total == 1
    pending = next(r for r in queue if r["status"] == "imported" and not r["flags"]) if version < 3 else flagged[0]
    assert approve(ws, pending["image_id"], pending["version"], "olga")["status"] == "approved"
    detail = image_detail(ws, queue[0]["image_id"])
    assert detail["problem"] is None and detail["metadata"]["faces"]
    result = export_training_set(ws, tmp_path / "export", allow_other_pack=True, captions="any")
    assert result["exported"] == 4 and result["without_caption"] == 0
    # the tallies' and browse_version's triggers are in place: a new tag and a re-curation are counted,
    # and each retires the browse columns' snapshot
    ws.store.browse_columns_min_rows = 0
    snapshot = ws.store.browse_columns(wait=True)
    assert snapshot is not None and snapshot.rows == 5
    ws.store.set_tags(queue[0]["image_id"], ["hat"])
    assert ws.store.browse_columns() is None
    assert browse(ws, BrowseFilter(tags=["hat"])).total == 1
    curate(ws)
    assert tallies(ws.store.conn) == direct_counts(ws.store.conn) and ws.store.stale_verdicts() == 0
    assert dict(ws.store.tag_counts()).get("hat") == 1


@pytest.mark.slow
def test_upgraded_workspace_serves_every_endpoint(tmp_path, users_file):
    from gradio_client import Client

    ws = upgraded(2, tmp_path / "ws")
    ws.store.close()
    with running_app(ws.root, "--auth", str(users_file)) as url:
        c = Client(url, auth=("ada", USERS["ada"][1]), verbose=False)
        page = c.predict(reason="low_resolution", api_name="/browse")
        assert page["total"] == 1
        assert c.predict(image_id=page["items"][0]["image_id"], api_name="/detail")["metadata"]["reasons"]
        assert c.predict(api_name="/statistics")["table1"]["after_curation"]["images"] == 4
        assert c.predict(status="imported", api_name="/caption_queue")["total"] == 5
