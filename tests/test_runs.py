"""Runs: stages recorded with provenance, workers that survive their caller, cancel, kill, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest
from conftest import REPO, studio_cli, wait_for
from oai_server import LocalOpenAI, Reply, image_key

from studio.runs import jobs as runs
from studio.dataset.browse import image_detail
from studio.workspace import Workspace


def studio(*args: str) -> subprocess.CompletedProcess:
    proc = studio_cli(*args, env={"STUDIO_FACE_PACK": "bundled"})
    assert proc.returncode == 0, proc.stderr
    return proc


def test_cli_stages_are_runs_with_provenance(tmp_path, curation_source):
    ws_dir = str(tmp_path / "ws")
    studio("ingest", str(curation_source), "--workspace", ws_dir, "--author", "ines")
    studio("analyze", "--workspace", ws_dir, "--face-pack", "bundled")
    listed = json.loads(studio("runs", "list", "--workspace", ws_dir, "--json").stdout)
    assert [(r["kind"], r["status"]) for r in listed] == [("analyze", "done"), ("ingest", "done")]
    ingest_run = listed[1]
    assert ingest_run["author"] == "ines" and ingest_run["result"]["added"] == 9
    assert ingest_run["progress"] == "9 done"  # a count without a known total, finished
    ws = Workspace.open(ws_dir)
    obama = next(r for r in ws.store.image_table() if r["source"].endswith("/obama.jpg"))
    prov = image_detail(ws, obama["id"])["metadata"]["provenance"]
    assert prov["ingest"]["run"] == ingest_run["id"] and prov["ingest"]["by"] == "ines"
    assert prov["analysis"]["run"]["run"] == listed[0]["id"] and prov["analysis"]["face_pack"].startswith("bundled:")
    assert prov["curation"]["run"]["kind"] == "analyze"  # analyze re-curated what it touched
    shown = studio("runs", "show", str(listed[0]["id"]), "--workspace", ws_dir).stdout
    assert '"status": "done"' in shown and "analyze" in shown


def wait(ws, run_id, check, timeout=300):
    """The run's row once ``check`` holds for it (dead workers reaped on the way)."""
    def state():
        runs.reap(ws)
        r = ws.store.run(run_id)
        return r if check(r) else None

    return wait_for(state, lambda: f"run {run_id}: {ws.store.run(run_id)}\n{runs.log_tail(ws, run_id)}",
                    timeout=timeout, interval=0.2)


def caption_args(server) -> list[str]:
    return ["--all", "--base-url", server.url, "--concurrency", "1", "--max-retries", "0"]


@pytest.mark.slow
def test_cancel_stops_at_the_next_item_and_rerun_resumes(photos_ws):
    ws = photos_ws
    # two answers, then the server holds every request until the cancel is in: it lands while the run is
    # inside item 3 however slowly this machine polls; the held answer is kept, the run stops after it
    with LocalOpenAI(lambda n, body: Reply(hold=n > 2)) as server:
        run_id = runs.submit_args(ws, "caption", caption_args(server), "ada", secrets_env={"OPENAI_API_KEY": "sk-run"})
        wait(ws, run_id, lambda r: r["done"] >= 2)
        assert runs.cancel(ws, run_id)
        server.release.set()
        cancelled = wait(ws, run_id, lambda r: r["status"] in ("cancelled", "done", "failed"))
        assert cancelled["status"] == "cancelled" and cancelled["exit_code"] == 130
        done_before = len(ws.store.current_captions())
        assert 2 <= done_before < 6
        assert not runs.cancel(ws, run_id)  # already finished
        again = runs.rerun(ws, run_id, "ada", secrets_env={"OPENAI_API_KEY": "sk-run"})
        finished = wait(ws, again, lambda r: r["status"] in ("done", "failed", "cancelled"))
        assert finished["status"] == "done" and finished["resumes"] == run_id
        assert finished["result"]["skipped"] == done_before and finished["result"]["captioned"] == 6 - done_before
        asked = Counter(image_key(b) for b in server.requests)
    assert len(ws.store.current_captions()) == 6 and max(asked.values()) == 1  # no image asked twice
    assert "sk-run" not in runs.log_tail(ws, again) and "sk-run" not in json.dumps(ws.store.run(again))


@pytest.mark.slow
def test_killed_worker_is_marked_failed_and_rerun_resumes(photos_ws):
    ws = photos_ws
    with LocalOpenAI(lambda n, body: Reply(hold=n > 1)) as server:  # one answer, then held: killed mid-run
        run_id = runs.submit_args(ws, "caption", caption_args(server), "ada", secrets_env={"OPENAI_API_KEY": "sk-run"})
        running = wait(ws, run_id, lambda r: r["done"] >= 1)
        os.killpg(os.getpgid(running["pid"]), signal.SIGKILL)
        server.release.set()
        failed = wait(ws, run_id, lambda r: r["status"] != "running")
        assert failed["status"] == "failed" and "without finishing" in failed["error"]
        again = runs.rerun(ws, run_id, "ada", secrets_env={"OPENAI_API_KEY": "sk-run"})
        assert wait(ws, again, lambda r: r["status"] in ("done", "failed"))["status"] == "done"
    captions = ws.store.current_captions()
    assert len(captions) == 6 and len({c[0] for c in captions}) == 6
    # one model caption per image, however the kill fell
    rows = ws.store.conn.execute("SELECT image_id, COUNT(*) FROM captions WHERE origin = 'model' GROUP BY image_id")
    assert {n for _, n in rows} == {1}


def test_worker_started_from_a_process_outlives_it(photos_ws, tmp_path):
    """The app's worker is in its own session: the process that started it can go away."""
    ws = photos_ws
    code = ("import sys; from studio.runs import jobs as runs; from studio.workspace import Workspace; "
            "print(runs.submit_args(Workspace.open(sys.argv[1]), 'analyze', ['--face-pack', 'bundled'], 'ada'))")
    starter = subprocess.run([sys.executable, "-c", code, str(ws.root)], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "STUDIO_FACE_PACK": "bundled"})
    assert starter.returncode == 0, starter.stderr
    run_id = int(starter.stdout.strip())
    done = wait(ws, run_id, lambda r: r["status"] in ("done", "failed"))
    assert done["status"] == "done" and done["result"]["analyzed"] == 6, runs.log_tail(ws, run_id)
    assert "analyze" in runs.log_tail(ws, run_id)


def test_bad_run_requests_are_clear(photos_ws):
    ws = photos_ws
    with pytest.raises(ValueError, match="unknown run kind 'deploy'"):
        runs.submit_args(ws, "deploy", [], "ada")
    with pytest.raises(ValueError, match="no run 999"):
        runs.rerun(ws, 999, "ada")
    with LocalOpenAI(lambda n, body: Reply(hold=True)) as server:  # the first run cannot end before the test lets it
        first = runs.submit_args(ws, "caption", caption_args(server), "ada", secrets_env={"OPENAI_API_KEY": "sk-run"})
        with pytest.raises(ValueError, match=f"a caption run is already going \\(run {first}"):
            runs.submit_args(ws, "caption", caption_args(server), "bob", secrets_env={"OPENAI_API_KEY": "sk-run"})
        runs.cancel(ws, first)
        server.release.set()
        wait(ws, first, lambda r: r["status"] not in ("queued", "running"))
    before = len(ws.store.runs())
    with pytest.raises(ValueError, match="analyze arguments: unrecognized arguments: --no-such-flag"):
        runs.submit_args(ws, "analyze", ["--no-such-flag"], "ada")  # the worker's parser refuses it before any run
    assert len(ws.store.runs()) == before
    bad = runs.submit_args(ws, "analyze", ["--face-pack", "/nonexistent/pack"], "ada")  # parses, fails in the worker
    failed = wait(ws, bad, lambda r: r["status"] != "queued" and r["status"] != "running")
    assert failed["status"] == "failed" and "/nonexistent/pack does not exist" in runs.log_tail(ws, bad)
