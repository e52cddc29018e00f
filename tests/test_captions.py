"""Captioning through the real openai client against a local OpenAI-compatible HTTP server."""
from __future__ import annotations

import logging
import signal
import time
from collections import Counter

import pytest
from conftest import studio_cli, wait_for
from oai_server import LocalOpenAI, Reply, decode_image, image_key

from studio.captions.captioner import PROMPT, CaptionSettings, caption_workspace, check_caption

KEY = "sk-test-0123456789-SECRET-abcdef"
FAST = dict(max_retries=3, timeout=5.0)


def run(ws, server, **kw):
    settings = CaptionSettings(base_url=server.url, **{**FAST, **kw})
    return caption_workspace(ws, settings, KEY, kept_only=False)


def test_exact_prompt_and_parameters_reach_the_server(ws):
    with LocalOpenAI() as server:
        report = run(ws, server)
    assert report.captioned == 4 and report.failed == 0
    assert len(server.requests) == 4
    for body in server.requests:
        assert body["model"] == "gpt-4o"
        assert (body["temperature"], body["top_p"], body["frequency_penalty"], body["presence_penalty"],
                body["max_tokens"]) == (0, 1, 0, 0, 4096)
        text, image = body["messages"][0]["content"]
        assert text == {"type": "text", "text": PROMPT}
        assert PROMPT.startswith("Your goal is to using less than 4 fluent sentences")
        assert PROMPT.endswith("should not include any tabulation format.")
        assert image["image_url"]["url"].startswith("data:image/jpeg;base64,")
        assert max(decode_image(body).size) <= 768  # downscaled before sending
    assert set(server.auth_headers) == {f"Bearer {KEY}"}


def test_client_retries_429_and_500(ws):
    seen = Counter()

    def responder(n, body):
        k = image_key(body)
        seen[k] += 1
        if seen[k] == 1:
            return Reply(status=429, headers={"retry-after-ms": "20"})
        if seen[k] == 2:
            return Reply(status=500, headers={"retry-after-ms": "20"})
        return Reply()

    with LocalOpenAI(responder) as server:
        report = run(ws, server)
    assert report.captioned == 4 and report.failed == 0
    assert sorted(seen.values()) == [3, 3, 3, 3]


def test_slow_reply_times_out_and_is_retried(ws):
    seen = Counter()

    def responder(n, body):
        seen[image_key(body)] += 1
        return Reply(hang=True) if seen[image_key(body)] == 1 else Reply()  # held until the test ends

    with LocalOpenAI(responder) as server:
        report = run(ws, server, timeout=2.0)
    assert report.captioned == 4
    assert sorted(seen.values()) == [2, 2, 2, 2]


def test_a_held_request_holds_back_no_other_answer(ws):
    """Answers are stored as they arrive: while one image's request hangs, the others' are already kept
    (a run killed then loses no answer it paid for)."""
    import threading

    held = {}

    def responder(n, body):  # the first answer tells the rate limiter there are no limits; the next one hangs
        if n == 2:
            held["key"] = image_key(body)
        return Reply(hang=True) if image_key(body) == held.get("key") else Reply()

    with LocalOpenAI(responder) as server:
        reports = []
        worker = threading.Thread(target=lambda: reports.append(run(ws, server, timeout=600, max_retries=0,
                                                                    concurrency=2)))
        worker.start()
        try:
            wait_for(lambda: ws.store.caption_usage()["model_captions"] == 3, "the three answered images stored")
            assert worker.is_alive()  # the held request is still out
        finally:
            server.release.set()  # the held one gets a 503
            worker.join(timeout=120)
    assert reports[0].captioned == 3 and reports[0].failed == 1


def test_exhausted_retries_are_recorded_and_the_batch_goes_on(ws, caplog):
    bad = {}

    def responder(n, body):
        bad.setdefault("key", image_key(body))
        return Reply(status=500, headers={"retry-after-ms": "5"}) if image_key(body) == bad["key"] else Reply()

    with LocalOpenAI(responder) as server:
        report = run(ws, server, max_retries=1, concurrency=1)
    assert report.captioned == 3 and report.failed == 1
    assert "InternalServerError" in report.errors[0]
    assert Counter(image_key(b) for b in server.requests)[bad["key"]] == 2  # first try + one retry


@pytest.mark.parametrize("reply, flags", [
    ("1. **Hair:** short and dark\n2. **Expression:** smiling", ["structured"]),
    ("| feature | value |\n|---|---|\n| hair | dark |", ["structured"]),
    ("- smiling\n- short hair", ["structured"]),
    ("I'm sorry, I can't help with identifying people in images.", ["refusal"]),
    ("One. Two. Three. Four. Five sentences here.", ["too_long"]),
    ("", ["empty"]),
    ("A woman with curly red hair smiles broadly. She wears round glasses.", []),
])
def test_flags(ws, reply, flags):
    with LocalOpenAI(lambda n, body: Reply(text=reply)) as server:
        run(ws, server)
    rows, total = ws.store.caption_queue(status="generated")
    assert total == 4 and all(r["flags"] == flags for r in rows)
    assert check_caption(reply) == flags


def test_usage_and_cost(ws):
    with LocalOpenAI(lambda n, body: Reply(prompt_tokens=1200, completion_tokens=80)) as server:
        report = run(ws, server)
    per_caption = (1200 * 2.50 + 80 * 10.00) / 1e6
    assert report.prompt_tokens == 4800 and report.completion_tokens == 320
    assert report.as_dict()["cost_per_caption_usd"] == pytest.approx(per_caption)
    assert report.cost_usd == pytest.approx(4 * per_caption)
    assert ws.store.caption_usage()["cost_usd"] == pytest.approx(4 * per_caption)


def test_idempotent_and_keyed_by_settings(ws):
    with LocalOpenAI() as server:
        run(ws, server)
        again = run(ws, server)
        assert again.captioned == 0 and again.skipped == 4 and len(server.requests) == 4
        other = run(ws, server, model="llava-next")
        assert other.captioned == 4 and len(server.requests) == 8
        assert {b["model"] for b in server.requests[4:]} == {"llava-next"}


def test_missing_key_is_a_clear_error(ws):
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        caption_workspace(ws, CaptionSettings(), None, kept_only=False)


def caption_cli(ws, server, env: dict | None = None):
    """`python -m studio caption` against the local server, running in the background."""
    return studio_cli("caption", "--workspace", ws.root, "--all", "--base-url", server.url, "--concurrency", "2",
                      "--max-retries", "0", "-v", env={"OPENAI_API_KEY": KEY, **(env or {})}, background=True)


@pytest.mark.slow
def test_killed_run_resumes_without_asking_again(ws):
    def responder(n, body):
        return Reply() if n <= 2 else Reply(hang=True)  # two answers, then the server stalls

    with LocalOpenAI(responder) as server:
        proc = caption_cli(ws, server)
        wait_for(lambda: ws.store.caption_usage()["model_captions"] >= 2 or proc.poll() is not None,
                 "two captions stored")
        if ws.store.caption_usage()["model_captions"] != 2:
            proc.kill()
            pytest.fail(f"{len(server.requests)} requests, answered {server.answered}: {proc.communicate()[1][-3000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)
        first = list(server.answered)
        server.responder = lambda n, body: Reply()
        server.release.set()
        proc = caption_cli(ws, server)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert len(first) == 2
    assert sorted(Counter(server.answered).values()) == [1, 1, 1, 1]  # every image answered exactly once
    model_rows = ws.store.conn.execute("SELECT image_id, COUNT(*) FROM captions WHERE origin = 'model' GROUP BY image_id")
    assert [n for _, n in model_rows] == [1, 1, 1, 1]


def test_key_never_written_or_logged(ws, caplog):
    caplog.set_level(logging.DEBUG)
    with LocalOpenAI(lambda n, body: Reply(status=401) if n == 1 else Reply()) as server:
        report = run(ws, server, max_retries=0, concurrency=1)
        proc = caption_cli(ws, server, env={"OPENAI_LOG": "debug"})
        out, err = proc.communicate(timeout=120)
    assert report.failed == 1  # the 401 is recorded ...
    assert KEY not in " ".join(report.errors)  # ... without the key
    assert KEY not in caplog.text and KEY not in out and KEY not in err
    for path in ws.root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert server.auth_headers and all(h == f"Bearer {KEY}" for h in server.auth_headers)


def test_captioning_keeps_under_the_keys_rate_limit(ws):
    """The server reports a window of 2 requests per second in x-ratelimit-* headers and answers 429 beyond it;
    with 8 requests allowed in flight, the run paces itself by the headers: no 429, every image captioned."""
    import threading

    lock = threading.Lock()
    arrivals: list[float] = []
    refused: list[int] = []
    window = {"start": None}

    def responder(n, body):
        with lock:
            now = time.monotonic()
            if window["start"] is None or now - window["start"] >= 1.0:
                window["start"], window["count"] = now, 0
            window["count"] += 1
            arrivals.append(now)
            reset = max(0.0, 1.0 - (now - window["start"]))
            headers = {"x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": str(max(0, 2 - window["count"])),
                       "x-ratelimit-reset-requests": f"{int(reset * 1000)}ms", "x-ratelimit-limit-tokens": "1000000",
                       "x-ratelimit-remaining-tokens": "990000", "x-ratelimit-reset-tokens": "6m0s"}
            if window["count"] > 2:
                refused.append(n)
                return Reply(status=429, headers={**headers, "retry-after-ms": str(int(reset * 1000))})
        return Reply(headers=headers)

    with LocalOpenAI(responder) as server:
        report = run(ws, server, concurrency=8, max_retries=0)
    assert report.captioned == 4 and report.failed == 0 and refused == []
    assert report.rate_limits == {"requests": 2, "tokens": 1000000} and report.rate_limit_wait_s > 0
    assert all(b - a >= 0.0 for a, b in zip(arrivals, arrivals[1:])) and len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] >= 1.0  # 4 requests at 2 per second take more than one window


def test_reset_headers_are_read_as_openai_writes_them():
    from studio.captions.ratelimit import parse_reset

    assert parse_reset("1s") == 1.0 and parse_reset("6m0s") == 360.0 and parse_reset("120ms") == 0.12
    assert parse_reset("1h2m3.5s") == 3723.5 and parse_reset("0.5") == 0.5
    assert parse_reset(None) is None and parse_reset("soon") is None
