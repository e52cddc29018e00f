"""Export kept images in the CrossFaceID / InstantID training layout.

``train.jsonl`` has one line per image with ``image_file``, ``additional_feature`` (caption),
``bbox``, ``landmarks`` (5 points), ``insightface_feature_file`` (a ``.npy`` with the raw,
un-normalised 512-d embedding, as InstantID's training reads it) and ``person``. Paths are
relative to the JSONL. Photos whose stored bytes are not upright RGB (EXIF-rotated, CMYK,
16-bit, ...) are written as upright PNGs, so the boxes match whatever library reads them.

The face is the photo's subject (the one curation chose, see :func:`studio.dataset.curate.choose_subjects`)
and each line records the face pack that made its embedding: the released InstantID and
CrossFaceID weights were trained on antelopev2 embeddings, and another pack's 512-d vector looks
valid but is not, so exporting one takes an explicit ``allow_other_pack``.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ..codes import CurationStatus
from ..images import load_rgb
from ..workspace import Workspace, atomic_write_bytes, atomic_writer


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "person"


def _link_or_copy(src: Path, dest: Path) -> None:
    if dest.exists():
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


#: which current captions an export uses: a person's word first
CAPTION_POLICIES = {
    "approved": "approved or edited by a person",
    "unflagged": "approved or edited, or a model/imported caption with no flag",
    "any": "any current caption that was not rejected",
}
MISSING_CAPTION = ("keep", "skip", "error")
TRAINING_PACK = "antelopev2"


class ExportError(ValueError):
    """The export cannot be written as asked; nothing was written."""


def caption_counts(status: str | None, flags: list[str], policy: str) -> bool:
    """Whether a current caption with this status and flags is used under ``policy``."""
    if status in (None, "none", "rejected"):
        return False
    if policy == "approved":
        return status in ("approved", "edited")
    if policy == "unflagged":
        return status in ("approved", "edited") or not flags
    return True


def check_packs(packs: list[str], allow_other_pack: bool) -> None:
    """Refuse embeddings from a face pack the released weights were not trained on, unless allowed."""
    other = [p for p in packs if p.split(":")[0] != TRAINING_PACK]
    if other and not allow_other_pack:
        raise ExportError(
            f"the embeddings were made with face pack {', '.join(other)}, not {TRAINING_PACK}. InstantID and "
            f"CrossFaceID were trained on {TRAINING_PACK} embeddings; another pack's 512-d vectors look valid but "
            f"do not match them. Re-analyze with `python -m studio analyze --face-pack {TRAINING_PACK}` (get it with "
            "`python -m studio models --download antelopev2`), or pass --allow-other-pack to export anyway.")


def write_image(ws: Workspace, out: Path, r: dict) -> str:
    """Place image row ``r`` under ``out/images/<person>/`` (linked, or an upright PNG); returns its relative path."""
    person_dir = _safe(r["person"])
    stem = r["sha256"][:16]
    src = ws.media_path(r["media_path"])
    (out / "images" / person_dir).mkdir(parents=True, exist_ok=True)
    if r["exif_rotated"] or r["original_mode"] != "RGB":
        image_rel = f"images/{person_dir}/{stem}.png"
        if not (out / image_rel).exists():
            buf = io.BytesIO()
            Image.fromarray(load_rgb(src).rgb).save(buf, format="PNG")
            atomic_write_bytes(out / image_rel, buf.getvalue())
    else:
        image_rel = f"images/{person_dir}/{stem}{src.suffix}"
        _link_or_copy(src, out / image_rel)
    return image_rel


def write_embedding(out: Path, r: dict, face) -> str:
    """Save ``face``'s raw 512-d embedding as ``out/embeddings/<person>/<sha>.npy``; returns its relative path."""
    person_dir = _safe(r["person"])
    (out / "embeddings" / person_dir).mkdir(parents=True, exist_ok=True)
    emb_rel = f"embeddings/{person_dir}/{r['sha256'][:16]}.npy"
    buf = io.BytesIO()
    np.save(buf, face.embedding.astype(np.float32))
    atomic_write_bytes(out / emb_rel, buf.getvalue())
    return emb_rel


#: images read (and their faces and captions) per query while exporting
CHUNK = 2000


def _candidates(ws: Workspace, include_failed: bool, captions: str) -> Iterator[tuple[dict, object, str]]:
    """(image row, subject face or None, caption or "") of every image an export looks at, in id order,
    a chunk at a time; an image without a subject embedding is not exported."""
    for chunk in ws.store.image_chunks(passed_only=not include_failed, chunk=CHUNK):
        ids = [r["id"] for r in chunk]
        subjects, current = ws.store.subject_faces(ids), ws.store.current_caption_flags(ids)
        for r in chunk:
            subject = subjects.get(r["id"])
            status, flags = current.get(r["id"], (None, []))
            caption = (r["caption"] or "") if caption_counts(status, flags, captions) else ""
            yield r, (subject if subject is not None and subject.embedding is not None else None), caption


def export_training_set(ws: Workspace, out_dir: str | Path, include_failed: bool = False, *,
                        captions: str = "approved", missing_caption: str = "keep",
                        allow_other_pack: bool = False, run_id: int | None = None, author: str = "studio",
                        track: Callable[..., Iterable] | None = None) -> dict:
    """Write ``out_dir/train.jsonl`` + images + embeddings for every kept image; returns counts.

    ``captions``: which captions count (:data:`CAPTION_POLICIES`). ``missing_caption``: what to do
    with an image that has none: ``keep`` it with an empty caption (counted and warned about),
    ``skip`` it, or ``error`` (write nothing). Images are read and written a chunk at a time, so a
    workspace of millions exports in bounded memory; ``train.jsonl`` appears whole at the end.
    """
    if captions not in CAPTION_POLICIES:
        raise ExportError(f"captions must be one of {list(CAPTION_POLICIES)}, got {captions!r}")
    if missing_caption not in MISSING_CAPTION:
        raise ExportError(f"missing_caption must be one of {MISSING_CAPTION}, got {missing_caption!r}")
    packs = ws.store.export_packs(passed_only=not include_failed)
    check_packs(packs, allow_other_pack)
    if missing_caption == "error":  # a first pass that writes nothing
        missing, first = 0, []  # a count and the first ids: bounded at millions
        for r, face, caption in _candidates(ws, include_failed, captions):
            if face and not caption:
                missing += 1
                if len(first) < 10:
                    first.append(r["id"])
        if missing:
            raise ExportError(f"{missing} of the images to export have no {captions} caption "
                              f"({CAPTION_POLICIES[captions]}); first ids: {first}. Review them, choose "
                              "--captions unflagged|any, or --missing-caption keep|skip.")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "embeddings").mkdir(exist_ok=True)
    exported = without = 0
    rows: Iterable = _candidates(ws, include_failed, captions)
    if track is not None:
        counts = ws.store.status_counts()  # from the tally: what the chunks will hold, without a scan
        looked_at = sum(counts.values()) if include_failed else counts.get(int(CurationStatus.PASS), 0)
        rows = track(rows, total=looked_at, desc="export", unit="image")
    with atomic_writer(out / "train.jsonl") as fh:
        for r, main, caption in rows:
            if main is None:
                continue
            if not caption:
                without += 1
                if missing_caption == "skip":
                    continue
            image_rel = write_image(ws, out, r)
            emb_rel = write_embedding(out, r, main)
            fh.write(json.dumps({
                "image_file": image_rel,
                "additional_feature": caption,
                "bbox": [round(v, 2) for v in main.bbox],
                "landmarks": main.kps,
                "insightface_feature_file": emb_rel,
                "person": r["person"],
                "face_pack": r["pack"],
                "face_index": main.face_index,
            }, ensure_ascii=False).encode("utf-8") + b"\n")
            exported += 1
    skipped = without if missing_caption == "skip" else 0
    result = {"exported": exported, "without_caption": 0 if missing_caption == "skip" else without,
              "skipped_without_caption": skipped, "captions": captions, "face_packs": packs,
              "jsonl": str(out / "train.jsonl")}
    if without:
        result["warning"] = (f"{without} exported image(s) have no {captions} caption "
                             f"({CAPTION_POLICIES[captions]}): " + ("left out" if skipped else "written with an empty caption"))
    settings = {"include_failed": include_failed, "captions": captions, "missing_caption": missing_caption,
                "allow_other_pack": allow_other_pack}
    atomic_write_bytes(out / "export.json", json.dumps({**result, **settings, "run_id": run_id}, indent=2).encode())
    ws.store.record_export(out_dir=str(out.resolve()), settings=settings, result=result, run_id=run_id, author=author)
    return result
