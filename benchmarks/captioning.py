"""Captioning throughput against a local OpenAI-compatible endpoint that answers in 100 ms.

Same process, same images (the demo photos re-encoded into --images distinct JPEGs), the real
openai client over HTTP:
* baseline: a sequential loop (``caption_workspace`` with one request in flight);
* ours: ``caption_workspace`` with 16 requests in flight.
Each run starts from a fresh workspace so every image is requested.

Last line: ``ratio: <sequential seconds / concurrent seconds>``. Goal: >= 8.
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

from studio.captions import CaptionSettings, caption_workspace  # noqa: E402
from studio.ingest import ingest  # noqa: E402
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


def timed_run(src: Path, tmp: Path, server: LocalOpenAI, concurrency: int) -> tuple[float, int]:
    ws = Workspace.open(tmp / f"ws_{concurrency}")
    ingest(ws, src)
    settings = CaptionSettings(base_url=server.url, concurrency=concurrency, max_retries=0, timeout=30)
    report = caption_workspace(ws, settings, "sk-benchmark", kept_only=False)
    assert report.failed == 0, report.errors
    return report.seconds, report.captioned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--latency", type=float, default=0.1, help="server answer time in seconds")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalOpenAI(lambda n, body: Reply(delay=args.latency)) as server:
        tmp = Path(tmp)
        src = make_photos(tmp / "src", args.images)
        seq_s, seq_n = timed_run(src, tmp, server, 1)
        con_s, con_n = timed_run(src, tmp, server, args.concurrency)
        assert seq_n == con_n == args.images
        print(f"images: {args.images}, endpoint latency {args.latency * 1000:.0f} ms")
        print(f"sequential loop:   {seq_n / seq_s:.1f} captions/s ({seq_s:.2f} s)")
        print(f"concurrency {args.concurrency}:    {con_n / con_s:.1f} captions/s ({con_s:.2f} s)")
        print(f"ratio: {seq_s / con_s:.2f}")


if __name__ == "__main__":
    main()
