"""Face analysis on a local Ray instance (2 CPUs): the same faces, embeddings and verdicts as the
single-process path; a run killed midway and rerun analyses every image exactly once."""
from __future__ import annotations

import contextlib
import json
import os
import signal

import numpy as np
import psutil
import pytest
from conftest import studio_cli, wait_for
from PIL import Image

from studio.dataset.analyze import analyze
from studio.dataset.curate import curate
from studio.dataset.ingest import ingest
from studio.workspace import Workspace

pytest.importorskip("ray")

pytestmark = pytest.mark.ray


def _name(source: str) -> str:
    return "/".join(source.split("/")[-2:])  # person/file


def faces_by_source(ws) -> dict[str, list]:
    return {_name(r["source"]): [(f.bbox, f.kps, f.embedding) for f in ws.store.faces(r["id"])]
            for r in ws.store.image_table()}


def verdicts(ws) -> dict[str, tuple]:
    return {_name(r["source"]): (r["passed"], r["reasons"], r["subject_face"], r["outlier"])
            for r in ws.store.image_table()}


def test_ray_engine_matches_the_single_process_path(tmp_path, curation_source, pack):
    local, distributed = Workspace.open(tmp_path / "local"), Workspace.open(tmp_path / "ray")
    for ws in (local, distributed):
        ingest(ws, curation_source)
    analyze(local, pack=pack)
    report = analyze(distributed, pack=pack, engine="ray", workers=2)
    assert report.analyzed == len(local.store.image_table()) and report.failed == 0
    a, b = faces_by_source(local), faces_by_source(distributed)
    assert a.keys() == b.keys() and sum(len(v) for v in a.values()) > 10
    for src in a:
        assert len(a[src]) == len(b[src]), src
        for (box1, kps1, emb1), (box2, kps2, emb2) in zip(a[src], b[src]):
            np.testing.assert_allclose(box1, box2, atol=1e-3)
            np.testing.assert_allclose(kps1, kps2, atol=1e-2)
            np.testing.assert_allclose(emb1, emb2, atol=1e-4)
    curate(local), curate(distributed)
    assert verdicts(local) == verdicts(distributed)


def test_ray_run_killed_midway_resumes_without_analysing_twice(tmp_path, curation_source):
    src = tmp_path / "src"
    for person in curation_source.iterdir():
        (src / person.name).mkdir(parents=True)
        for photo in person.iterdir():
            img = Image.open(photo).convert("RGB")
            for q in (95, 90, 85, 80):  # different bytes, so none is a duplicate of another
                img.save(src / person.name / f"{photo.stem}_q{q}.jpg", quality=q)
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, src)
    total = len(ws.store.image_table())
    args = ("analyze", "--workspace", ws.root, "--engine", "ray", "--workers", "2", "--no-curate", "--json")
    env = {"STUDIO_FACE_PACK": "bundled"}

    def analysed() -> int:
        return ws.store.conn.execute("SELECT COUNT(*) FROM analyses").fetchone()[0]

    # the last photo is held: a named pipe in its place blocks the actor reading it until the test writes
    # to it, so the run is midway for certain when it is killed (the others are stored, that one is not)
    last_id, last_rel = ws.store.conn.execute("SELECT id, media_path FROM images ORDER BY id DESC LIMIT 1").fetchone()
    held = ws.media_path(last_rel)
    photo = held.read_bytes()
    held.unlink()
    os.mkfifo(held)
    proc = studio_cli(*args, env=env, background=True)
    wait_for(lambda: analysed() > 0 or proc.poll() is not None, "the first analysis stored", interval=0.05)
    # a SIGKILLed driver cannot shut its local Ray down: stop that Ray's processes (its descendants), and no
    # other (`ray stop` would also stop the Ray of a test running beside this one)
    ray_processes = psutil.Process(proc.pid).children(recursive=True)
    # the studio's local Ray runs its actors at the priority of the single-process path (Ray's own default
    # nices them to 15, and on a busy machine a stage then waited minutes for its first item)
    actors = [p for p in ray_processes if "MapWorker" in " ".join(p.cmdline())]
    assert actors and {p.nice() for p in actors} == {0}
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for p in ray_processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(ray_processes, timeout=60)
    first = analysed()
    assert 0 < first < total, f"killed after {first} of {total}"
    assert ws.store.conn.execute("SELECT COUNT(*) FROM analyses WHERE image_id = ?", (last_id,)).fetchone()[0] == 0
    held.unlink()
    held.write_bytes(photo)  # released: the rerun reads the photo itself
    done = studio_cli(*args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["analyzed"] == total - first and result["already_analyzed"] == first
    revs = ws.store.conn.execute("SELECT COUNT(*), MAX(rev), COUNT(DISTINCT image_id) FROM analyses").fetchone()
    assert tuple(revs) == (total, total, total)  # every image saved once: no rerun of a committed one, none missing
