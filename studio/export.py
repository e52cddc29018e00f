"""Export kept images in the CrossFaceID / InstantID training layout.

``train.jsonl`` has one line per image with ``image_file``, ``additional_feature`` (caption),
``bbox``, ``landmarks`` (5 points), ``insightface_feature_file`` (a ``.npy`` with the raw,
un-normalised 512-d embedding, as InstantID's training reads it) and ``person``. Paths are
relative to the JSONL. Photos whose stored bytes are not upright RGB (EXIF-rotated, CMYK,
16-bit, ...) are written as upright PNGs, so the boxes match whatever library reads them.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .images import load_rgb
from .workspace import Workspace, atomic_write_bytes


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "person"


def _link_or_copy(src: Path, dest: Path) -> None:
    if dest.exists():
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def export_training_set(ws: Workspace, out_dir: str | Path, include_failed: bool = False) -> dict:
    """Write ``out_dir/train.jsonl`` + images + embeddings for every kept image; returns counts."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "embeddings").mkdir(exist_ok=True)
    lines, without_caption = [], 0
    for r in ws.store.image_table():
        if not (r["passed"] or include_failed):
            continue
        faces = ws.store.faces(r["id"])
        if not faces or faces[0].embedding is None:
            continue
        main = faces[0]
        person_dir = _safe(r["person"])
        stem = r["sha256"][:16]
        src = ws.media_path(r["media_path"])
        (out / "images" / person_dir).mkdir(exist_ok=True)
        (out / "embeddings" / person_dir).mkdir(exist_ok=True)
        if r["exif_rotated"] or r["original_mode"] != "RGB":
            image_rel = f"images/{person_dir}/{stem}.png"
            if not (out / image_rel).exists():
                buf = io.BytesIO()
                Image.fromarray(load_rgb(src).rgb).save(buf, format="PNG")
                atomic_write_bytes(out / image_rel, buf.getvalue())
        else:
            image_rel = f"images/{person_dir}/{stem}{src.suffix}"
            _link_or_copy(src, out / image_rel)
        emb_rel = f"embeddings/{person_dir}/{stem}.npy"
        buf = io.BytesIO()
        np.save(buf, main.embedding.astype(np.float32))
        atomic_write_bytes(out / emb_rel, buf.getvalue())
        caption = (r["caption"] or "") if r["caption_status"] != "rejected" else ""
        without_caption += not caption
        lines.append(json.dumps({
            "image_file": image_rel,
            "additional_feature": caption,
            "bbox": [round(v, 2) for v in main.bbox],
            "landmarks": main.kps,
            "insightface_feature_file": emb_rel,
            "person": r["person"],
        }, ensure_ascii=False))
    atomic_write_bytes(out / "train.jsonl", ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    return {"exported": len(lines), "without_caption": without_caption, "jsonl": str(out / "train.jsonl")}
