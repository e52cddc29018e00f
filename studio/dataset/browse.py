"""Browsing a workspace: validated filters, pages, and the detail of one image.

No gradio here: the Browse tab and the tests call these functions with plain values. Bad
values raise :class:`BrowseError` with a message meant for the person who typed them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..codes import CAPTION_VERSION_STATUSES, REASONS, CaptionStatus, CurationStatus
from .draw import draw_faces
from ..images import ImageError, load_rgb
from ..validate import parse_id, plural
from ..workspace import Workspace

STATUSES = {"all": None, **{s.label: int(s) for s in CurationStatus}}
STATUS_NAMES = {int(s): s.label for s in CurationStatus}
OUTLIER_CHOICES = ("any", "yes", "no")
CAPTION_STATUSES = (CaptionStatus.NONE.value, *CAPTION_VERSION_STATUSES)
SORTS = ("id", "person", "face_ratio", "resolution", "identity_sim", "face_count")
MAX_PAGE_SIZE = 200


SPLIT_CHOICES = ("train", "validation", "test", "unassigned")


class BrowseError(ValueError):
    """A filter value the user has to fix."""


@dataclass
class BrowseFilter:
    persons: list[str] = field(default_factory=list)
    status: str = "all"
    reason: str | None = None
    pose: str | None = None
    tags: list[str] = field(default_factory=list)
    min_side: int | None = None
    max_side: int | None = None
    min_face_ratio: float | None = None
    max_face_ratio: float | None = None
    outlier: str = "any"
    caption_text: str = ""
    caption_status: str | None = None
    split: str | None = None  # train | validation | test | unassigned (persons' cross-training split)
    sort: str = "id"
    descending: bool = False


@dataclass
class BrowsePage:
    items: list[dict]
    total: int
    page: int
    pages: int

    @property
    def summary(self) -> str:
        if not self.total:
            return "No images match these filters."
        return f"{plural(self.total, 'image')} match{'es' if self.total == 1 else ''} · page {self.page} of {self.pages}"


def _fts_query(text: str) -> str | None:
    """Free text -> an FTS5 query where every word must appear (as a prefix); no operator injection."""
    words = re.findall(r"\w+", text.lower())
    return " ".join(f'"{w}"*' for w in words) or None


def _range(lo, hi, name: str, low: float, high: float | None) -> tuple:
    for v, which in ((lo, "minimum"), (hi, "maximum")):
        if v is None:
            continue
        if isinstance(v, float) and math.isnan(v):
            raise BrowseError(f"{name} {which} is not a number")
        if v < low or (high is not None and v > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise BrowseError(f"{name} {which} must be {bounds}, got {v}")
    if lo is not None and hi is not None and lo > hi:
        raise BrowseError(f"{name}: minimum {lo} is above maximum {hi}")
    return lo, hi


def browse(ws: Workspace, f: BrowseFilter, page: int = 1, page_size: int = 48) -> BrowsePage:
    """One page of images matching ``f``; raises :class:`BrowseError` on out-of-range values.

    A page past the end shows the last page (``BrowsePage.page`` says which was shown).
    """
    store = ws.store
    if isinstance(page, bool) or not isinstance(page, int):
        raise BrowseError(f"page must be a whole number, got {page!r}")
    page = max(1, page)
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise BrowseError(f"page size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
    if f.status not in STATUSES:
        raise BrowseError(f"status must be one of {list(STATUSES)}, got {f.status!r}")
    if f.reason and f.reason not in REASONS:
        raise BrowseError(f"unknown rejection reason {f.reason!r}; known: {', '.join(REASONS)}")
    if f.outlier not in OUTLIER_CHOICES:
        raise BrowseError(f"outlier must be one of {OUTLIER_CHOICES}, got {f.outlier!r}")
    if f.caption_status and f.caption_status not in CAPTION_STATUSES:
        raise BrowseError(f"caption status must be one of {CAPTION_STATUSES}, got {f.caption_status!r}")
    if f.split and f.split not in SPLIT_CHOICES:
        raise BrowseError(f"split must be one of {SPLIT_CHOICES}, got {f.split!r}")
    if f.sort not in SORTS:
        raise BrowseError(f"sort must be one of {SORTS}, got {f.sort!r}")
    side = _range(f.min_side, f.max_side, "resolution (shortest side, px)", 0, None)
    ratio = _range(f.min_face_ratio, f.max_face_ratio, "face ratio", 0.0, 1.0)
    person_ids = None
    if f.persons:
        found = store.person_ids(f.persons)
        unknown = [p for p in f.persons if p not in found]
        if unknown:
            raise BrowseError(f"unknown person: {', '.join(unknown)}")
        person_ids = list(found.values())
    query = dict(
        person_ids=person_ids, status=STATUSES[f.status],
        reasons_mask=(1 << REASONS.index(f.reason)) if f.reason else 0,
        pose=f.pose or None, tags=list(f.tags or ()), min_side=side, face_ratio=ratio,
        outlier={"any": None, "yes": True, "no": False}[f.outlier],
        caption_match=_fts_query(f.caption_text or ""), caption_status=f.caption_status or None,
        split=f.split or None, sort=f.sort, descending=f.descending, limit=page_size, offset=(page - 1) * page_size,
    )
    rows, total = store.browse_page(**query)
    pages = max(1, math.ceil(total / page_size))
    if page > pages:  # past the end: show the last page
        page = pages
        rows, total = store.browse_page(**{**query, "offset": (page - 1) * page_size})
    for r in rows:
        r["status"] = STATUS_NAMES[r["status"]]
        r["reasons"] = [name for i, name in enumerate(REASONS) if r["reasons_mask"] >> i & 1]
        r["outlier"] = None if r["outlier"] is None else bool(r["outlier"])
        if isinstance(r["face_ratio"], float):  # a value of another type is shown as it is, not this page's failure
            r["face_ratio"] = round(r["face_ratio"], 4)
        r["media_missing"] = not ws.media_path(r["media_path"]).is_file()
    return BrowsePage(items=rows, total=total, page=page, pages=pages)


def filter_choices(ws: Workspace) -> dict:
    """What the filter widgets offer: persons with counts, reasons, poses, tags."""
    return {
        "persons": ws.store.persons(),
        "reasons": list(REASONS),
        "poses": ws.store.poses(),
        "tags": [t for t, _ in ws.store.tag_counts()],
        "caption_statuses": list(CAPTION_STATUSES),
        "sorts": list(SORTS),
    }


def _provenance(ws: Workspace, row: dict) -> dict:
    """Which run made each part of this image's record: who, when, with which pack / model / settings."""
    def run(run_id):
        r = ws.store.run(run_id) if run_id else None
        return None if r is None else {"run": r["id"], "kind": r["kind"], "by": r["author"], "at": r["started_at"],
                                       "settings": r["settings"]}
    cur = ws.store.current_caption(row["id"])
    caption = None if cur is None else {"version": cur["version"], "status": cur["status"], "by": cur["author"],
                                        "at": cur["created_at"], "model": cur["model"], "run": run(cur["run_id"])}
    return {"ingest": run(row["ingest_run"]),
            "analysis": {"face_pack": row["pack"], "at": row["analyzed_at"], "run": run(row["analysis_run"])},
            "curation": {"at": row["curated_at"], "run": run(row["curation_run"])},
            "caption": caption}


def image_detail(ws: Workspace, image_id: int) -> dict:
    """Everything about one image: metadata, faces drawn on the photo, the person's other photos.

    A media file deleted behind the studio's back yields ``annotated=None`` and a ``problem``
    message instead of an exception.
    """
    try:
        image_id = parse_id(image_id)
    except ValueError as exc:
        raise BrowseError(str(exc)) from None
    rows = ws.store.image_table(image_ids=[image_id])
    if not rows:
        raise BrowseError(f"no image with id {image_id}")
    row = rows[0]
    faces = ws.store.faces(row["id"])
    path = ws.media_path(row["media_path"])
    annotated, problem = None, None
    subject = row["subject_face"] if row["subject_face"] is not None else (0 if faces else None)
    try:
        annotated = draw_faces(load_rgb(path).rgb, faces, subject=subject)
    except ImageError as exc:
        problem = f"cannot show this photo: {exc.code.replace('_', ' ')} ({path.name}): {exc.detail}"
    others = [
        {"image_id": o["id"], "media_path": o["media_path"],
         "label": f"#{o['id']} · {'pending' if o['passed'] is None else ('pass' if o['passed'] else 'fail')}"}
        for o in ws.store.image_table(person=row["person"]) if o["id"] != row["id"]
    ]
    metadata = {
        "id": row["id"], "person": row["person"], "split": ws.store.splits().get(row["person"], "unassigned"),
        "source": row["source"], "sha256": row["sha256"],
        "size": f"{row['width']}x{row['height']}", "original_mode": row["original_mode"], "exif_rotated": row["exif_rotated"],
        "status": "pending" if row["passed"] is None else ("pass" if row["passed"] else "fail"),
        "reasons": row["reasons"] or [], "identity_sim": row["identity_sim"], "outlier": row["outlier"],
        "face_pack": row["pack"], "analysis_error": row["analysis_error"],
        "subject_face": subject,
        "subject_chosen_by": {"centroid": "closest to the person's identity centroid",
                              "largest": "largest face (too few photos of this person for a centroid)",
                              None: "largest face (not curated yet)"}.get(row["subject_by"], row["subject_by"]),
        "verdict_stale": row["verdict_stale"],
        "provenance": _provenance(ws, row),
        "caption": row["caption"], "caption_status": row["caption_status"], "tags": ws.store.tags_of(row["id"]),
        "faces": [
            {"index": f.face_index, "bbox": [round(v, 1) for v in f.bbox], "score": round(f.score, 3),
             "area_ratio": round(f.area_ratio, 4), "pose": f.pose, "yaw": f.yaw, "pitch": f.pitch, "kps": f.kps}
            for f in faces
        ],
    }
    return {"metadata": metadata, "annotated": annotated, "problem": problem, "same_person": others}
