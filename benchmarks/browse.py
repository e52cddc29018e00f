"""Browse and Statistics speed on synthetic workspaces: the paper's dataset and a large one.

Workspaces are written through the store's own write path (add_image, save_analysis, set_tags,
curate), so the browse index and the tallies are exactly what a real ingest -> analyze -> curate
produces; no photo files exist (the browse query never opens them). They are cached in --cache,
and a build that is stopped resumes where it stopped (one transaction per 20,000 images). The
build prints its write rate (images/s through those calls).

Measured, in one process:
* ours: ``studio.dataset.browse.browse`` (what the Browse tab and /browse call) on random filter
  combinations and a random page of each result: p50 / p95 per size against the goals
  (40,596 images: p95 <= 30 ms; the large one, --rows, default 1,000,000, FaceID-6M 6,000,000:
  p95 <= 300 ms), broken down by filter kind, and the first page of each filter; at the large
  size Browse answers from its in-memory columns (built first, build time and size printed), and
  the same queries are also timed through SQLite's indexes alone;
* the Statistics tab's computation (Table 1, reasons, per-person histograms, pose, attributes)
  at each size (goal <= 2 s);
* baseline: the same filters applied in Python to ``image_list`` (the normalised join every
  image row comes from), at 40,596 images, on the identical (filter, page) sequence as ours,
  each side warmed by one untimed query first;
* cold start: ``python app.py`` on the 40,596-image workspace until the first page arrives
  through gradio_client (goal <= 5 s).

Last line: ``ratio: <baseline median / our median>`` at 40,596 images, over that shared sequence.
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studio.dataset.browse import BrowseFilter, browse  # noqa: E402
from studio.dataset.curate import curate  # noqa: E402
from studio.dataset.stats import distribution_frames, image_list  # noqa: E402
from studio.workspace import Workspace  # noqa: E402

WORDS = ["smiling", "neutral", "glasses", "beard", "hat", "outdoors", "suit", "laughing", "serious", "profile",
         "sunglasses", "curly", "blonde", "dark", "short", "long", "hair", "woman", "man", "young", "older"]
POSES = ["frontal"] * 6 + ["side", "looking up", "looking down"]
SIDES = [256, 384, 480, 512, 600, 720, 800, 1024, 1200, 1600]
TAGS = ["smiling", "glasses", "hat", "neutral", "side profile"]


def build(root: Path, n_images: int, persons: int, seed: int = 0, chunk: int = 20_000) -> Workspace:
    """Write (or finish writing) the workspace, one committed transaction per ``chunk`` images.

    Prints the write rate: images/s through add_image + save_analysis + set_tags, what an ingest
    followed by an analysis writes per image.
    """
    ws = Workspace.open(root)
    if ws.store.counts()["curated"] == n_images:
        return ws
    store = ws.store
    done = store.counts()["images"]
    start, written = time.perf_counter(), 0
    for lo in range(done, n_images, chunk):
        with store.transaction():
            for i in range(lo, min(lo + chunk, n_images)):
                rng = random.Random(seed * 1_000_003 + i)  # per image, so a resumed build writes the same rows
                w, h = rng.choice(SIDES), rng.choice(SIDES)
                caption = "A " + " ".join(rng.sample(WORDS, 6)) + "."
                image_id = store.add_image(
                    source=f"synthetic://{i}", sha256=f"{i:064x}", person=person_name(rng.randrange(persons)),
                    media_path=f"media/synthetic/{i}.jpg", width=w, height=h, original_mode="RGB",
                    exif_rotated=False, import_caption=caption)
                n_faces = rng.choice([0, 1, 1, 1, 1, 1, 1, 2, 3, 5])
                ratio = rng.uniform(0.005, 0.3)
                face = {"bbox": [0, 0, 10, 10], "score": 0.9, "kps": [[1, 1]] * 5, "embedding": None,
                        "area_ratio": ratio, "yaw": 0.0, "pitch": 0.0, "pose": rng.choice(POSES)}
                store.save_analysis(image_id, "synthetic", [face] * n_faces, ratio if n_faces else 0.0)
                if rng.random() < 0.5:
                    store.set_tags(image_id, rng.sample(TAGS, rng.randint(1, 2)))
        written += min(lo + chunk, n_images) - lo
        if written % 200_000 == 0 or lo + chunk >= n_images:
            elapsed = time.perf_counter() - start
            print(f"  {lo + chunk if lo + chunk < n_images else n_images:,} images written "
                  f"({elapsed:.0f} s, {written / elapsed:,.0f} images/s)", flush=True)
    write_s = time.perf_counter() - start
    if written:
        print(f"  ingest write rate: {written / write_s:,.0f} images/s ({written:,} images, {write_s:.0f} s)",
              flush=True)
    t = time.perf_counter()
    curate(ws)
    print(f"  curate: {time.perf_counter() - t:.0f} s; built {n_images:,} images", flush=True)
    return ws


def person_name(k: int) -> str:
    return f"person_{k:06d}"


def random_filter(rng: random.Random, persons: int) -> BrowseFilter:
    f = BrowseFilter()
    choice = rng.randrange(8)
    if choice == 0 or rng.random() < 0.3:
        f.persons = [person_name(rng.randrange(persons))]
    if choice == 1 or rng.random() < 0.3:
        f.status = rng.choice(["pass", "fail"])
    if choice == 2:
        f.reason = rng.choice(["small_face", "low_resolution", "too_many_faces", "no_face"])
    if choice == 3 or rng.random() < 0.2:
        f.pose = rng.choice(POSES)
    if choice == 4:
        f.tags = [rng.choice(TAGS)]
    if choice == 5 or rng.random() < 0.2:
        f.min_side = rng.choice([512, 720])
        f.min_face_ratio = rng.choice([0.04, 0.1])
    if choice == 6:
        f.caption_text = " ".join(rng.sample(WORDS, 2))
    if choice == 7 or rng.random() < 0.3:
        f.sort = rng.choice(["face_ratio", "resolution", "person", "id"])
        f.descending = rng.random() < 0.5
    return f


def query_sequence(ws: Workspace, persons: int, n: int, seed: int = 1) -> list[tuple[BrowseFilter, int]]:
    """Random filters, each with a random page of its result: the work both sides are timed on."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        f = random_filter(rng, persons)
        out.append((f, rng.randint(1, browse(ws, f, page=1, page_size=48).pages)))
    return out


def time_ours(ws: Workspace, queries: list[tuple[BrowseFilter, int]]) -> list[float]:
    browse(ws, queries[0][0], page=queries[0][1], page_size=48)  # warm-up, untimed
    times = []
    for f, page in queries:
        t = time.perf_counter()
        browse(ws, f, page=page, page_size=48)
        times.append(time.perf_counter() - t)
    return times


def naive_page(ws: Workspace, f: BrowseFilter, page: int, page_size: int = 48) -> list[dict]:
    """The baseline: every image row from the normalised join, filtered and sorted in Python."""
    rows = image_list(ws)
    tags = {}
    if f.tags:
        tags = {i: set(ws.store.tags_of(i)) for i in (r["id"] for r in rows)}

    def keep(r):
        side = min(r["width"], r["height"])
        return ((not f.persons or r["person"] in f.persons) and (f.status == "all" or r["status"] == f.status)
                and (not f.reason or f.reason in r["reasons"]) and (not f.pose or r["pose"] == f.pose)
                and (not f.tags or set(f.tags) <= tags.get(r["id"], set()))
                and (f.min_side is None or side >= f.min_side)
                and (f.min_face_ratio is None or (r["face_ratio"] or 0) >= f.min_face_ratio)
                and (not f.caption_text or all(w in (r["caption"] or "").lower() for w in f.caption_text.split())))

    key = {"id": "id", "person": "person", "face_ratio": "face_ratio", "resolution": "width"}[f.sort]
    hits = sorted((r for r in rows if keep(r)), key=lambda r: (r[key] is None, r[key] or 0, r["id"]), reverse=f.descending)
    return hits[(page - 1) * page_size: page * page_size]


def time_naive(ws: Workspace, queries: list[tuple[BrowseFilter, int]]) -> list[float]:
    naive_page(ws, queries[0][0], queries[0][1])  # warm-up, untimed
    times = []
    for f, page in queries:
        t = time.perf_counter()
        naive_page(ws, f, page)
        times.append(time.perf_counter() - t)
    return times


def cold_start(ws: Workspace) -> float:
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--workspace", str(ws.root), "--port", str(port)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        page = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(api_name="/browse")
        assert page["items"], "first page is empty"
        return time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def time_update(ws: Workspace) -> str:
    """Seconds from a tag edit, and from a caption edit, until the in-memory columns are current
    again. The tag edit is undone afterwards; the caption edit is the same each run (the first
    image's caption becomes "a benchmark caption"), so the cached workspace stays what it was."""
    store = ws.store
    image_id = browse(ws, BrowseFilter(), page=1, page_size=1).items[0]["image_id"]
    tags = store.tags_of(image_id)
    out = []
    for what, edit in (("tag edit", lambda: store.set_tags(image_id, [*tags, "benchmark"])),
                       ("caption edit", lambda: store.add_caption(image_id, text="a benchmark caption", status="edited",
                                                                  origin="human", author="benchmark"))):
        edit()
        t = time.perf_counter()
        cols = store.browse_columns(wait=True)
        out.append(f"{what} {time.perf_counter() - t:.2f} s ({cols.patched_rows} rows read again)")
    store.set_tags(image_id, tags)
    store.browse_columns(wait=True)
    return ", ".join(out)


def breakdown(queries: list[tuple[BrowseFilter, int]], times: list[float]) -> dict[str, list[float]]:
    """Times by the filter's costliest part: caption words, a tag, or neither."""
    out: dict[str, list[float]] = {}
    for (f, _), t in zip(queries, times):
        kind = "with caption words" if f.caption_text else "with a tag" if f.tags else "other filters"
        out.setdefault(kind, []).append(t)
    return out


def time_statistics(ws: Workspace) -> float:
    """What the Statistics tab computes when opened (the median of 3, after one untimed run)."""
    distribution_frames(ws)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        distribution_frames(ws)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "studio-browse-bench")
    parser.add_argument("--queries", type=int, default=200, help="random filter queries per size")
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="the large workspace's images (FaceID-6M: 6000000), persons = rows / 20")
    parser.add_argument("--skip-large", "--skip-million", action="store_true", help="only the 40,596-image workspace")
    parser.add_argument("--baseline-queries", type=int, default=10, help="queries in the shared baseline sequence")
    args = parser.parse_args()

    sizes = [(40_596, 1_999, 30.0)] + ([] if args.skip_large else [(args.rows, max(1, args.rows // 20), 300.0)])
    for n, persons, goal_ms in sizes:
        print(f"workspace of {n:,} images, {persons:,} persons:", flush=True)
        ws = build(args.cache / f"ws_{n}", n, persons)
        t = time.perf_counter()
        cols = ws.store.browse_columns(wait=True)
        if cols is not None:
            print(f"  browse columns in memory: built in {time.perf_counter() - t:.1f} s, {cols.nbytes / 1e6:,.0f} MB",
                  flush=True)
            print(f"  after an edit, the columns are current again in: {time_update(ws)}", flush=True)
        queries = query_sequence(ws, persons, args.queries)
        if cols is not None:  # the same queries through SQLite's indexes alone (the path before the columns)
            saved, ws.store.browse_columns_min_rows = ws.store.browse_columns_min_rows, None
            sql = time_ours(ws, queries)
            ws.store.browse_columns_min_rows = saved
            print(f"  SQLite indexes alone: p50 {pct(sql, 50) * 1000:.1f} ms, p95 {pct(sql, 95) * 1000:.1f} ms", flush=True)
        times = time_ours(ws, queries)
        p50, p95 = pct(times, 50) * 1000, pct(times, 95) * 1000
        print(f"  filter + page: p50 {p50:.1f} ms, p95 {p95:.1f} ms (goal p95 <= {goal_ms:.0f} ms: "
              f"{'met' if p95 <= goal_ms else 'NOT met'})", flush=True)
        for kind, picked in breakdown(queries, times).items():
            print(f"    {kind}: {len(picked)} queries, p50 {pct(picked, 50) * 1000:.1f} ms, "
                  f"p95 {pct(picked, 95) * 1000:.1f} ms", flush=True)
        firsts = time_ours(ws, [(f, 1) for f, _ in queries])
        print(f"  first page of each filter (what a user sees on applying it): p50 {pct(firsts, 50) * 1000:.1f} ms, "
              f"p95 {pct(firsts, 95) * 1000:.1f} ms", flush=True)
        stats_s = time_statistics(ws)
        print(f"  Statistics tab (Table 1, reasons, per-person histograms, pose, attributes): {stats_s:.2f} s "
              f"(goal <= 2 s: {'met' if stats_s <= 2 else 'NOT met'})", flush=True)
    ws = Workspace.open(args.cache / "ws_40596")
    cold = cold_start(ws)
    print(f"cold start to first page (40,596 images): {cold:.2f} s (goal <= 5 s: {'met' if cold <= 5 else 'NOT met'})")
    shared = query_sequence(ws, 1_999, args.baseline_queries, seed=2)
    naive = time_naive(ws, shared)
    ours_shared = time_ours(ws, shared)
    print(f"baseline (Python filter over image_list) at 40,596: median {statistics.median(naive) * 1000:.0f} ms; "
          f"ours on the same {len(shared)} queries: median {statistics.median(ours_shared) * 1000:.1f} ms")
    print(f"ratio: {statistics.median(naive) / statistics.median(ours_shared):.1f}")


if __name__ == "__main__":
    main()
