"""Face-analysis throughput on Ray with 1 and 2 local actors, and the single-process path, same images.

Images: the real photos of ``benchmarks/curation.py`` (assets/demo + the wheels' photos), each
re-encoded into ``--copies`` distinct JPEGs (>= 1,000 images by default). Each engine analyses the
same images in a fresh workspace with the bundled face pack (ingest is not timed). For Ray the
time from ``ray.init`` to the first analysed image (start-up: actors loading the models) is shown
apart from the steady rate.

Prints images/s per engine (end to end, and after the first image), start-up, scaling efficiency
(2-actor rate / (2 x 1-actor rate)), and the same ratio without Ray (the single-process path on
all cores against the same held to one core: what the machine's cores give this work at all);
last line ``ratio: <2-actor images/s / 1-actor images/s>`` after start-up (start-up is printed
apart; goal >= 1.5 on a 2-core machine).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def run(template: Path, where: Path, pack, engine: str, workers: int | None) -> dict:
    from studio.dataset.analyze import analyze
    from studio.workspace import Workspace

    shutil.copytree(template, where)
    ws = Workspace.open(where)
    first: list[float] = []

    def progress(rows, **_):
        for row in rows:
            if not first:
                first.append(time.perf_counter())
            yield row

    start = time.perf_counter()
    report = analyze(ws, pack=pack, engine=engine, workers=workers, progress=progress)
    end = time.perf_counter()
    n = report.analyzed + report.failed
    steady = (n - 1) / (end - first[0]) if first and end > first[0] else 0.0
    return {"images": n, "seconds": end - start, "rate": n / (end - start), "startup": (first[0] - start) if first else 0,
            "steady": steady}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=112, help="distinct copies per photo (9 photos)")
    args = parser.parse_args()

    import logging

    from curation import make_dataset

    from studio.dataset.faces import resolve_pack
    from studio.dataset.ingest import ingest
    from studio.workspace import Workspace

    logging.getLogger("ray").setLevel(logging.WARNING)
    pack = resolve_pack("bundled")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = make_dataset(tmp / "src", args.copies)
        template = tmp / "template"
        ws = Workspace.open(template)
        ingest(ws, src)
        total = len(ws.store.image_table())
        ws.store.close()
        results = {}
        for label, engine, workers in (("single process", "local", None), ("1 core", "local", None),
                                       ("ray, 1 actor", "ray", 1), ("ray, 2 actors", "ray", 2)):
            cpus = os.sched_getaffinity(0)
            if label == "1 core":  # the single-process path held to one CPU (threads made now inherit it)
                os.sched_setaffinity(0, {min(cpus)})
            try:
                results[label] = r = run(template, tmp / label.replace(" ", "_").replace(",", ""), pack, engine,
                                         workers)
            finally:
                os.sched_setaffinity(0, cpus)
            print(f"{label:15s}: {r['images']} images in {r['seconds']:.1f} s = {r['rate']:.1f} img/s "
                  f"(start-up {r['startup']:.1f} s, then {r['steady']:.1f} img/s)", flush=True)
        one, two = results["ray, 1 actor"]["steady"], results["ray, 2 actors"]["steady"]
        print(f"{total} images, bundled face pack; scaling efficiency 2 actors: {two / (2 * one):.2f}")
        # what this machine's cores give without Ray: the same analysis on 1 thread and on one per core
        print(f"without Ray, all cores / 1 core: "
              f"{results['single process']['steady'] / results['1 core']['steady']:.2f}")
        faster = max(results, key=lambda k: results[k]["rate"])
        print(f"fastest on this machine: {faster}")
        print(f"ratio: {two / one:.3f}")


if __name__ == "__main__":
    main()
