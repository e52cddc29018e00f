"""Captioning through the OpenAI Batch API: the real openai client against the local server's files and
batches endpoints (upload, create, poll, download), a partly failing batch, and a restart mid-batch."""
from __future__ import annotations

import json
import signal

from conftest import studio_cli, wait_for
from oai_server import LocalOpenAI, Reply, image_key
from test_captions import KEY

from studio.captions.batch import BATCH_DISCOUNT, batches, caption_batch
from studio.captions.captioner import PROMPT, CaptionSettings, caption_workspace


def settings(server) -> CaptionSettings:
    return CaptionSettings(base_url=server.url, max_retries=0, timeout=10.0)


def model_rows(ws) -> list[tuple[int, int]]:
    return [tuple(r) for r in ws.store.conn.execute(
        "SELECT image_id, COUNT(*) FROM captions WHERE origin = 'model' GROUP BY image_id ORDER BY image_id")]


def test_a_batch_that_completes(ws):
    with LocalOpenAI() as server:
        report = caption_batch(ws, settings(server), KEY, kept_only=False, poll_seconds=0.05)
        assert report.captioned == 4 and report.failed == 0
        assert len(server.batches) == 1 and len(server.files) == 2  # the input file, the output file
        b = next(iter(server.batches.values()))
        assert b["endpoint"] == "/v1/chat/completions" and b["completion_window"] == "24h"
        line = b["lines"][0]
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        assert line["body"]["messages"][0]["content"][0]["text"] == PROMPT and line["body"]["model"] == "gpt-4o"
        assert line["body"]["temperature"] == 0 and line["body"]["max_tokens"] == 4096
        # half the synchronous price, for the same tokens
        assert abs(report.cost_usd - BATCH_DISCOUNT * settings(server).cost(4 * 1000, 4 * 50)) < 1e-9
        assert [r["status"] for r in batches(ws)] == ["completed"] and batches(ws)[0]["imported"]
        # the same cache keys as synchronous captioning: nothing is asked again either way
        again = caption_workspace(ws, settings(server), KEY, kept_only=False)
        assert again.skipped == 4 and again.captioned == 0
        assert caption_batch(ws, settings(server), KEY, kept_only=False, poll_seconds=0.05).skipped == 4
        assert len(server.batches) == 1
    assert model_rows(ws) == [(i, 1) for i, _ in model_rows(ws)] and len(model_rows(ws)) == 4
    assert not list((ws.root / "captions" / "batches").glob("*.jsonl"))  # the request file is not kept


def test_a_partly_failing_batch_is_retried_synchronously_or_reported(ws):
    failing: set[str] = set()

    def responder(n, body):
        if n <= 4 and len(failing) < 2 and image_key(body) not in failing:
            failing.add(image_key(body))
            return Reply(status=500)
        return Reply(text="A person smiling.")

    with LocalOpenAI(responder) as server:
        report = caption_batch(ws, settings(server), KEY, kept_only=False, poll_seconds=0.05)
        assert report.captioned == 4 and report.failed == 0
        assert len(server.requests) == 6  # 4 batch lines + the 2 failed ones asked again synchronously
        assert abs(report.cost_usd - (2 * BATCH_DISCOUNT + 2) * settings(server).cost(1000, 50)) < 1e-9
    with LocalOpenAI(lambda n, body: Reply(status=500) if n == 1 else Reply()) as server:
        other = CaptionSettings(base_url=server.url, max_retries=0, model="gpt-4o-mini")
        report = caption_batch(ws, other, KEY, kept_only=False, poll_seconds=0.05, retry_failed=False)
        assert report.captioned == 3 and report.failed == 1
        assert "the batch could not answer (scripted 500)" in report.errors[0]
        assert len(server.requests) == 4


def batch_caption(ws, server):
    """`python -m studio caption --batch` against the local server, running in the background."""
    return studio_cli("caption", "--workspace", ws.root, "--all", "--base-url", server.url, "--max-retries", "0",
                      "--batch", "--poll-seconds", "0.1", "--json", env={"OPENAI_API_KEY": KEY}, background=True)


def test_a_restart_while_the_batch_is_in_progress_polls_the_same_batch(ws):
    with LocalOpenAI() as server:
        server.hold_batches.set()
        proc = batch_caption(ws, server)
        wait_for(lambda: batches(ws) and batches(ws)[0]["batch_id"], "the batch to be submitted")
        assert batches(ws) and batches(ws)[0]["status"] == "in_progress", proc.communicate(timeout=5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
        assert model_rows(ws) == [] and len(server.batches) == 1
        server.hold_batches.clear()
        proc = batch_caption(ws, server)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert result["captioned"] == 4 and result["mode"].startswith("batch") and result["batches"] == ["batch_1"]
        assert len(server.batches) == 1 and len(server.requests) == 4  # nothing asked, or paid for, twice
    assert len(model_rows(ws)) == 4 and all(n == 1 for _, n in model_rows(ws))
    assert KEY not in json.dumps(batches(ws)) and KEY not in out + err


def test_a_damaged_photo_is_its_own_failure_in_both_paths(ws):
    """A workspace photo truncated on disk after ingest: its encoding fails on the encoder threads, that image
    is reported by name and never sent, and the other three are captioned (synchronously and by batch)."""
    rows = ws.store.image_table()
    damaged = ws.media_path(rows[0]["media_path"])
    damaged.write_bytes(damaged.read_bytes()[:200])
    with LocalOpenAI() as server:
        sync = caption_workspace(ws, settings(server), KEY, kept_only=False)
        assert (sync.captioned, sync.failed) == (3, 1) and len(server.requests) == 3
        assert f"image {rows[0]['id']}:" in sync.errors[0] and damaged.name in sync.errors[0]
    assert [i for i, _ in model_rows(ws)] == sorted(r["id"] for r in rows[1:])
    with LocalOpenAI() as server:  # another model: every image is asked again, by batch
        other = CaptionSettings(base_url=server.url, model="gpt-4o-mini", max_retries=0, timeout=10.0)
        batch = caption_batch(ws, other, KEY, kept_only=False, poll_seconds=0.05)
        assert (batch.captioned, batch.failed) == (3, 1) and damaged.name in batch.errors[0]
        sent = [line["custom_id"] for b in server.batches.values() for line in b["lines"]]
        assert sorted(int(c.split(":")[0]) for c in sent) == sorted(r["id"] for r in rows[1:])
