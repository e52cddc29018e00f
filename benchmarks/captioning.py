"""Captioning throughput against a local OpenAI-compatible endpoint that answers in 100 ms.

Same process, same images (the demo photos re-encoded into --images distinct JPEGs), the real
openai client over HTTP:
* baseline: the plain loop one writes first: the ``OpenAI`` client, one photo after another (encode,
  request, keep the answer in a dict);
* what a user would write instead of the studio: ``AsyncOpenAI`` with an ``asyncio.Semaphore`` at
  the same concurrency, the same prompt, parameters and image encoding, answers kept in a dict
  (no database, no resume, no flags). Goal: ours >= 0.95 of its speed;
* ours: ``caption_workspace`` with 16 requests in flight.
Each studio run starts from a fresh workspace so every image is requested.

The AsyncOpenAI loop and ours alternate over ``--rounds`` rounds (which goes first alternates too), and
the medians decide, so one noisy run cannot. Prints each round, then ``vs AsyncOpenAI: <their median
seconds / our median seconds>``; the last line is ``ratio: <sequential seconds / our median seconds>``.
Goals: >= 0.95 and >= 8.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
from oai_server import LocalOpenAI, Reply  # noqa: E402
from PIL import Image  # noqa: E402

from studio.captions.captioner import CaptionSettings, build_messages, caption_workspace, media_data_url  # noqa: E402
from studio.dataset.ingest import ingest  # noqa: E402
from studio.workspace import Workspace  # noqa: E402


def make_photos(root: Path, n: int) -> Path:
    photos = sorted((REPO / "assets" / "demo").rglob("*.*g"))
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    for i in range(n):
        img = arrays[i % len(arrays)].copy()
        img[:8, :8] = (i * 37 % 256, i * 91 % 256, i * 53 % 256)  # distinct bytes, so dedupe keeps each
        person = root / f"person_{i % 8}"
        person.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(person / f"{i:04d}.jpg", quality=92)
    return root


def timed_run(src: Path, tmp: Path, server: LocalOpenAI, concurrency: int, tag: str = "") -> tuple[float, int]:
    ws = Workspace.open(tmp / f"ws_{concurrency}{tag}")
    ingest(ws, src)
    settings = CaptionSettings(base_url=server.url, concurrency=concurrency, max_retries=0, timeout=30)
    report = caption_workspace(ws, settings, "sk-benchmark", kept_only=False)
    assert report.failed == 0, report.errors
    return report.seconds, report.captioned


def sequential_run(src: Path, tmp: Path, server: LocalOpenAI) -> tuple[float, int]:
    """The first thing one writes: encode a photo, ask, keep the answer; the next photo."""
    import time

    from openai import OpenAI

    ws = Workspace.open(tmp / "ws_sequential")
    ingest(ws, src)
    settings = CaptionSettings(base_url=server.url, max_retries=0, timeout=30)
    client = OpenAI(api_key="sk-benchmark", base_url=server.url, max_retries=0, timeout=30)
    start = time.perf_counter()
    answers = {}
    for image_id, _, media in ws.store.images_for_captioning(kept_only=False):
        resp = client.chat.completions.create(messages=build_messages(media_data_url(ws, media, settings)),
                                              **settings.request_params())
        answers[image_id] = resp.choices[0].message.content
    return time.perf_counter() - start, len(answers)


def async_openai_run(src: Path, tmp: Path, server: LocalOpenAI, concurrency: int, tag: str = "") -> tuple[float, int]:
    """The hand-written alternative: AsyncOpenAI + a semaphore over the same images."""
    import asyncio
    import time

    from openai import AsyncOpenAI

    ws = Workspace.open(tmp / f"ws_async{tag}")
    ingest(ws, src)  # the same photos, read from the same place
    settings = CaptionSettings(base_url=server.url, concurrency=concurrency, max_retries=0, timeout=30)
    jobs = ws.store.images_for_captioning(kept_only=False)

    async def run() -> dict:
        client = AsyncOpenAI(api_key="sk-benchmark", base_url=server.url, max_retries=0, timeout=30)
        gate = asyncio.Semaphore(concurrency)

        async def one(image_id: int, media: str):
            async with gate:
                url = await asyncio.to_thread(media_data_url, ws, media, settings)
                resp = await client.chat.completions.create(messages=build_messages(url), **settings.request_params())
                return image_id, resp.choices[0].message.content

        answers = dict(await asyncio.gather(*(one(i, m) for i, _, m in jobs)))
        await client.close()
        return answers

    start = time.perf_counter()
    answers = asyncio.run(run())
    return time.perf_counter() - start, len(answers)


def phase_split(src: Path, tmp: Path) -> dict[str, float]:
    """One thread's cost per image (ms) of the studio's own parts: encoding the photo for the request,
    and storing an answer (version, flags, tags, in one transaction)."""
    import time

    from studio.captions.captioner import CaptionReport, pending_captions, store_model_caption
    from studio.dataset.attributes import compile_vocabulary, vocabulary

    ws = Workspace.open(tmp / "ws_split")
    ingest(ws, src)
    settings = CaptionSettings(base_url="http://127.0.0.1:9/v1")
    todo = pending_captions(ws, settings, False, CaptionReport())
    tags = compile_vocabulary(vocabulary(ws))
    t0 = time.perf_counter()
    for _, _, media in todo:
        media_data_url(ws, media, settings)
    t1 = time.perf_counter()
    for image_id, key, _ in todo:
        store_model_caption(ws, image_id, key, settings, "1. **Expression:** smiling. A man in a suit.", 900, 120,
                            "benchmark", tags)
    t2 = time.perf_counter()
    return {"encode": 1000 * (t1 - t0) / len(todo), "store": 1000 * (t2 - t1) / len(todo)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--latency", type=float, default=0.1, help="server answer time in seconds")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of AsyncOpenAI and ours")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalOpenAI(lambda n, body: Reply(delay=args.latency)) as server:
        tmp = Path(tmp)
        src = make_photos(tmp / "src", args.images)
        seq_s, seq_n = sequential_run(src, tmp, server)
        print(f"images: {args.images}, endpoint latency {args.latency * 1000:.0f} ms")
        print(f"sequential loop:   {seq_n / seq_s:.1f} captions/s ({seq_s:.2f} s)")
        theirs, ours = [], []
        for r in range(args.rounds):
            sides = [("async", async_openai_run), ("ours", timed_run)]
            for side, fn in (sides if r % 2 == 0 else sides[::-1]):
                seconds, n = fn(src, tmp, server, args.concurrency, f"_{r}")
                assert n == args.images
                (theirs if side == "async" else ours).append(seconds)
            print(f"round {r + 1}: AsyncOpenAI + semaphore {args.images / theirs[-1]:.1f} captions/s, "
                  f"ours {args.images / ours[-1]:.1f} captions/s (concurrency {args.concurrency})")
        async_s, con_s = float(np.median(theirs)), float(np.median(ours))
        split = phase_split(src, tmp)
        print("one thread, ms per image: " + ", ".join(f"{k} {v:.1f}" for k, v in split.items())
              + " (the encoding is the same function on both sides)")
        print(f"medians: AsyncOpenAI {args.images / async_s:.1f} captions/s, ours {args.images / con_s:.1f} captions/s")
        print(f"vs AsyncOpenAI: {async_s / con_s:.2f}")
        print(f"ratio: {seq_s / con_s:.2f}")


if __name__ == "__main__":
    main()
