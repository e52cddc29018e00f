"""Captioning through the OpenAI Batch API: the same requests at half the price, answered within 24 h.

The run writes the requests as JSONL (one line per image, ``custom_id`` = ``<image id>:<cache key>``),
uploads it, creates the batch and records its id in the workspace *before* waiting, so a killed
run resumes by polling the same batch instead of paying twice. Finished batches are imported
through the same path as synchronous answers (a human-reviewed caption stays current); lines
the batch could not answer are retried synchronously, or reported.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from .captioner import (CaptionReport, CaptionSettings, build_messages, cache_key, describe_error, encode_ahead,
                        make_client, media_data_url, pending_captions, redact_secret, request_caption,
                        store_model_caption)
from ..images import ImageError
from ..runs.parallel import usable_cpus
from ..workspace import Workspace

log = logging.getLogger(__name__)

#: The Batch API's price relative to the synchronous one (OpenAI: 50% off).
BATCH_DISCOUNT = 0.5
MAX_REQUESTS = 50_000  # per batch (the API's limit)
MAX_FILE_BYTES = 180 * 1024 * 1024  # per input file (the API allows 200 MB)
SETTING = "caption_batches"
TERMINAL = ("completed", "failed", "expired", "cancelled")


def _records(ws: Workspace) -> list[dict]:
    return ws.store.get_setting(SETTING, [])


def _save(ws: Workspace, record: dict) -> None:
    """Insert or update one batch record (by its local id) in the workspace."""
    with ws.store.transaction():
        rows = [r for r in _records(ws) if r["local_id"] != record["local_id"]]
        ws.store.set_setting(SETTING, rows + [record])


def batches(ws: Workspace) -> list[dict]:
    """The workspace's caption batches, newest last (for the CLI and the run's result)."""
    return _records(ws)


def _params_id(settings: CaptionSettings) -> str:
    return cache_key("batch", settings)[:16]


def _chunks(lines: Iterable[tuple[str, bytes]]):
    """Group (custom id, JSONL line) into input files within the API's limits."""
    chunk, size = [], 0
    for cid, line in lines:
        if chunk and (len(chunk) >= MAX_REQUESTS or size + len(line) > MAX_FILE_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append((cid, line))
        size += len(line)
    if chunk:
        yield chunk


def _submit(ws: Workspace, client, chunk: list[tuple[str, bytes]], settings: CaptionSettings, run_id) -> dict:
    folder = ws.root / "captions" / "batches"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex[:12]}.jsonl"
    path.write_bytes(b"".join(line for _, line in chunk))
    try:
        with open(path, "rb") as fh:
            uploaded = client.files.create(file=fh, purpose="batch")
    finally:
        path.unlink(missing_ok=True)  # the photos are in the workspace already; the upload has the file
    record = {"local_id": uuid.uuid4().hex[:12], "params": _params_id(settings), "model": settings.model,
              "input_file_id": uploaded.id, "batch_id": None, "requests": len(chunk), "status": "submitting",
              "imported": False, "run_id": run_id, "created": time.time()}
    _save(ws, record)  # before the batch exists: a crash here is found again by its input file
    return _create(ws, client, record)


def _create(ws: Workspace, client, record: dict) -> dict:
    found = next((b for b in client.batches.list() if b.input_file_id == record["input_file_id"]), None)
    batch = found or client.batches.create(input_file_id=record["input_file_id"], endpoint="/v1/chat/completions",
                                           completion_window="24h", metadata={"studio": "caption"})
    record = {**record, "batch_id": batch.id, "status": batch.status}
    _save(ws, record)
    return record


def _lines(text: str) -> list[dict]:
    out = []
    for raw in text.splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


def caption_batch(ws: Workspace, settings: CaptionSettings, api_key: str | None, *, kept_only: bool = True,
                  author: str = "captioner", progress: Callable[..., Iterable] | None = None, client=None,
                  overwrite_reviewed: bool = False, run_id: int | None = None, poll_seconds: float = 30.0,
                  retry_failed: bool = True) -> CaptionReport:
    """Caption every image without a caption under ``settings`` through the Batch API; waits for the batches."""
    from ..dataset.attributes import compile_vocabulary, vocabulary

    start = time.perf_counter()
    client = client or make_client(api_key, settings)
    compiled = compile_vocabulary(vocabulary(ws))
    report = CaptionReport()
    pid = _params_id(settings)

    def keep(image_id: int, key: str, text: str, p_tok: int, c_tok: int, discount: float) -> None:
        flags, current = store_model_caption(ws, image_id, key, settings, text, p_tok, c_tok, author, compiled,
                                              overwrite_reviewed, run_id)
        report.stored(flags, current, p_tok, c_tok, settings.cost(p_tok, c_tok) * discount)

    fail = report.fail

    def retry(image_id: int, key: str, why: str) -> None:
        if not retry_failed:
            return fail(image_id, f"the batch could not answer ({why})")
        media = ws.store.image_table(image_ids=[image_id])[0]["media_path"]
        try:
            text, p, c = request_caption(client, settings, media_data_url(ws, media, settings))
        except ImageError as exc:
            return fail(image_id, str(exc))
        except Exception as exc:  # the client retried already
            return fail(image_id, redact_secret(describe_error(exc, settings), api_key))
        keep(image_id, key, text, p, c, 1.0)

    def finish(record: dict) -> None:
        """Wait for one batch, import its answers, retry or report what it could not answer."""
        if record["batch_id"] is None:
            record = _create(ws, client, record)
        batch = client.batches.retrieve(record["batch_id"])
        while batch.status not in TERMINAL:
            time.sleep(poll_seconds)
            batch = client.batches.retrieve(record["batch_id"])
        done = ws.store.captioned_keys()
        answered: set[str] = set()
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for row in _lines(client.files.content(file_id).text):
                cid = str(row.get("custom_id", ""))
                image_id, _, key = cid.partition(":")
                if not image_id.isdigit() or not key:
                    continue
                answered.add(cid)
                resp = row.get("response") or {}
                body = resp.get("body") or {}
                if resp.get("status_code") == 200 and body.get("choices"):
                    if key in done:
                        continue  # imported by an earlier, interrupted import
                    usage = body.get("usage") or {}
                    text = (body["choices"][0].get("message", {}).get("content") or "").strip()
                    keep(int(image_id), key, text, int(usage.get("prompt_tokens") or 0),
                         int(usage.get("completion_tokens") or 0), BATCH_DISCOUNT)
                elif key not in done:
                    err = row.get("error") or body.get("error") or {}
                    retry(int(image_id), key, err.get("message") or f"status {resp.get('status_code')}")
        missing = record["requests"] - len(answered)
        if missing > 0:  # an expired, failed or cancelled batch: its unanswered lines go out again on a rerun
            report.failed += missing
            report.errors.append(f"batch {record['batch_id']} {batch.status}: {missing} request(s) unanswered; "
                                 "run again to send them")
        _save(ws, {**record, "status": batch.status, "imported": True,
                   "counts": batch.request_counts.model_dump() if batch.request_counts else None})

    # 1. batches an earlier run submitted under these settings: wait for them and import
    for record in [r for r in _records(ws) if r["params"] == pid and not r["imported"]]:
        finish(record)
    # 2. what is still uncaptioned goes out in new batches, recorded before any waiting
    todo = pending_captions(ws, settings, kept_only, report)

    def lines():
        with ThreadPoolExecutor(usable_cpus()) as encoders:
            for (image_id, key, _), url, error in encode_ahead(ws, todo, settings, encoders):
                if error is not None:
                    fail(image_id, error)
                    continue
                yield line(image_id, key, url)

    def line(image_id: int, key: str, url: str) -> tuple[str, bytes]:
        cid = f"{image_id}:{key}"
        body = {"messages": build_messages(url), **settings.request_params()}
        return cid, (json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                                 "body": body}) + "\n").encode()

    submitted = [_submit(ws, client, chunk, settings, run_id) for chunk in _chunks(lines())]
    # 3. wait for them
    items: Iterable = submitted
    if progress is not None:
        items = progress(submitted, total=len(submitted), desc="caption batches", unit="batch")
    for record in items:
        finish(record)
    report.seconds = round(time.perf_counter() - start, 3)
    return report
