"""Scoring an evaluation run: our one-pass scorer vs one script per metric, same images, same models.

Work: ``--items`` test items x ``--per-item`` samples (models x λ), each sample a 1024x1024 PNG as
generation writes them (made from the real photos in assets/demo and the insightface wheels, so
faces are found), each item with a reference photo. Metrics: CLIP-T, CLIP-I, Face Sim and the
attribute score (zero-shot CLIP on the face crop).

Baseline: what evaluation code usually is: four scripts, one per metric, each looping over the
samples and decoding what it needs itself (the sample, and the reference photo for CLIP-I and
Face Sim), one image per CLIP forward pass, the reference face detected again for every sample.
Ours: ``studio.evaluation.metrics.Scorer``: each sample decoded once for every metric, its faces detected once,
each reference photo's face embedded once per item and its CLIP features once, CLIP batched,
decoding and preprocessing in threads.

Both use the same models: a CLIP given by ``--clip`` (default: a tiny open_clip built here, as the
tests do; pass a ViT-L/14 folder where you have one) and the face pack (``auto``). Both run in this
process, one after the other, ``--repeat`` times; the best time of each counts.
Last line: ``ratio: <per-metric scripts s / ours s>`` (above 1: ours is faster). Goal >= 3.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.curation import source_photos  # noqa: E402

ATTRIBUTES = ["smiling", "glasses", "looking up", "sad"]


def make_samples(root: Path, items: int, per_item: int) -> list[dict]:
    """Item i: a reference photo and ``per_item`` distinct 1024 px PNG samples made from another crop of it."""
    root.mkdir(parents=True, exist_ok=True)
    photos = [p for p in source_photos() if p.stem not in ("players",)]  # one clear subject each
    rows = []
    for i in range(items):
        src = Image.open(photos[i % len(photos)]).convert("RGB")
        ref = root / f"ref_{i:03d}.jpg"
        src.save(ref, quality=95)
        w, h = src.size
        for k in range(per_item):
            d = 0.02 * (k + 1 + i % 3)
            crop = src.crop((int(w * d), int(h * d), int(w * (1 - d)), int(h * (1 - d)))).resize((1024, 1024))
            out = root / f"sample_{i:03d}_{k}.png"
            crop.save(out)
            rows.append({"item": i, "path": out, "reference": ref, "prompt": f"a photo of a person {ATTRIBUTES[i % 4]}",
                         "attribute": ATTRIBUTES[i % 4]})
    return rows


# -- the baseline: one script per metric -------------------------------------------------------------

def _encode_one(clip, pil):
    import torch

    with torch.inference_mode():
        f = clip.model.encode_image(clip.preprocess(pil).unsqueeze(0))
        return torch.nn.functional.normalize(f.float(), dim=-1)[0].numpy()


def _encode_text_one(clip, text):
    import torch

    with torch.inference_mode():
        f = clip.model.encode_text(clip.tokenizer([text]))
        return torch.nn.functional.normalize(f.float(), dim=-1)[0].numpy()


def script_clip_t(clip, rows):
    return [float(_encode_one(clip, Image.open(r["path"]).convert("RGB")) @ _encode_text_one(clip, r["prompt"]))
            for r in rows]


def script_clip_i(clip, rows):
    return [float(_encode_one(clip, Image.open(r["path"]).convert("RGB"))
                  @ _encode_one(clip, Image.open(r["reference"]).convert("RGB"))) for r in rows]


def script_face_sim(analyzer, rows):
    from studio.dataset.faces import cosine

    out = []
    for r in rows:
        ref = analyzer.analyze(np.asarray(Image.open(r["reference"]).convert("RGB")))
        gen = analyzer.analyze(np.asarray(Image.open(r["path"]).convert("RGB")))
        out.append(cosine(ref[0]["embedding"], gen[0]["embedding"]) if ref and gen else None)
    return out


def script_attribute(clip, analyzer, rows):
    from studio.evaluation.metrics import CLIP_ATTRIBUTES, face_crop

    out = []
    for r in rows:
        rgb = np.asarray(Image.open(r["path"]).convert("RGB"))
        faces = analyzer.analyze(rgb)
        if not faces or r["attribute"] not in CLIP_ATTRIBUTES:
            out.append(faces[0]["pose"] if faces else None)
            continue
        feat = _encode_one(clip, face_crop(rgb, faces[0]["bbox"]))
        pos, neg = CLIP_ATTRIBUTES[r["attribute"]]
        means = [np.mean([_encode_text_one(clip, t) for t in ph], axis=0) for ph in (pos, neg)]
        logits = clip.logit_scale * np.array([m / np.linalg.norm(m) @ feat for m in means])
        out.append(float(np.exp(logits[0]) / np.exp(logits).sum()))
    return out


def baseline(clip, analyzer, rows) -> tuple[float, list]:
    start = time.perf_counter()
    t = script_clip_t(clip, rows)
    i = script_clip_i(clip, rows)
    f = script_face_sim(analyzer, rows)
    script_attribute(clip, analyzer, rows)
    return time.perf_counter() - start, list(zip(t, i, f))


def ours(clip, analyzer, rows, batch: int) -> tuple[float, list]:
    from studio.images import load_rgb
    from studio.evaluation.metrics import ScoreInput, Scorer

    start = time.perf_counter()
    refs = {}
    for r in rows:  # each item's reference face embedded once (a test set stores it when it is built)
        if r["item"] not in refs:
            faces = analyzer.analyze(load_rgb(r["reference"]).rgb)
            refs[r["item"]] = faces[0]["embedding"] if faces else None
    inputs = [ScoreInput(str(n), r["path"], r["prompt"], r["reference"], refs[r["item"]], r["attribute"])
              for n, r in enumerate(rows)]
    scores = [s for b in Scorer(clip, analyzer, batch_size=batch).score(inputs) for s in b]
    return time.perf_counter() - start, [(s["clip_t"], s.get("clip_i"), s.get("face_sim")) for s in scores]


def main() -> None:
    from studio.dataset.faces import FaceAnalyzer, resolve_pack
    from studio.evaluation.metrics import ClipSpec, load_clip
    from tiny_models import build_tiny_clip

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=12)
    ap.add_argument("--per-item", type=int, default=4, help="samples per item (models x λ)")
    ap.add_argument("--clip", default=None, help="open_clip folder / name (default: a tiny model built here)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip_dir = args.clip or str(build_tiny_clip(tmp / "clip"))
        clip = load_clip(ClipSpec(model=clip_dir, pretrained=None), "cpu")
        analyzer = FaceAnalyzer(resolve_pack("auto"))
        rows = make_samples(tmp / "samples", args.items, args.per_item)
        print(f"{len(rows)} samples of 1024x1024 PNG over {args.items} items; CLIP {clip.spec.label}; "
              f"faces {analyzer.pack.name}")
        analyzer.analyze(np.zeros((64, 64, 3), np.uint8))  # sessions built before timing
        base_s, ours_s = [], []
        for _ in range(args.repeat):
            s, b = baseline(clip, analyzer, rows)
            base_s.append(s)
            s, o = ours(clip, analyzer, rows, args.batch)
            ours_s.append(s)
        for (bt, bi, bf), (ot, oi, of) in zip(b, o):  # the same numbers either way
            assert abs(bt - ot) < 1e-4 and abs(bi - oi) < 1e-4 and ((bf is None) == (of is None))
            assert bf is None or abs(bf - of) < 1e-3
        faces = sum(1 for _, _, f in o if f is not None)
        print(f"Face Sim found on {faces}/{len(rows)} samples; results agree between both paths")
        print(f"per-metric scripts: {min(base_s):.2f} s ({len(rows) / min(base_s):.1f} samples/s)")
        print(f"ours (one pass):    {min(ours_s):.2f} s ({len(rows) / min(ours_s):.1f} samples/s)")
        print(f"ratio: {min(base_s) / min(ours_s):.2f}")


if __name__ == "__main__":
    main()
