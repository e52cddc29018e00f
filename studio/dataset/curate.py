"""The paper's curation rules and the identity-consistency check.

Curation reads only stored analyses, so changing a threshold re-curates in milliseconds
without touching the face models. Reasons are machine-readable codes:

``not_analyzed``, ``analysis_failed``, ``no_face``, ``too_few_faces``, ``too_many_faces``,
``low_resolution``, ``small_face``, ``identity_outlier``.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..codes import REASONS, reasons_mask  # noqa: F401  (REASONS re-exported for the UI and CLI)
from ..config import CurationRules
from ..workspace import Workspace

def rule_reasons(row: dict, rules: CurationRules, subject_ratio: float | None = None) -> list[str]:
    """Reasons one image fails the paper's rules (empty list: it passes).

    ``subject_ratio`` is the share of the image taken by the subject face (default: the largest face).
    """
    if not row["analyzed"]:
        return ["not_analyzed"]
    if row["error"]:
        return ["analysis_failed"]
    reasons = []
    n = row["face_count"] or 0
    if n == 0:
        reasons.append("no_face")
    elif n < rules.min_faces:
        reasons.append("too_few_faces")
    elif n > rules.max_faces:
        reasons.append("too_many_faces")
    if min(row["width"], row["height"]) < rules.min_side:
        reasons.append("low_resolution")
    ratio = subject_ratio if subject_ratio is not None else (row["largest_face_ratio"] or 0.0)
    if n > 0 and ratio < rules.min_face_ratio:
        reasons.append("small_face")
    return reasons


def robust_centroid(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """A centroid that a minority of wrong identities cannot drag away.

    Seed with the half of the photos that agree most with the others (median pairwise cosine),
    then refine once on the photos close to that seed. Works while mislabelled photos are under
    half of a person's set, which is the regime crawled data is in.
    """
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, np.nan)
    agreement = np.nanmedian(sims, axis=1)
    seed = agreement >= np.median(agreement)
    centroid = x[seed].mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    inliers = x @ centroid >= threshold
    if inliers.sum() >= 2:
        centroid = x[inliers].mean(axis=0)
        centroid /= np.linalg.norm(centroid)
    return centroid


@dataclass(frozen=True)
class Subject:
    """Which face a photo is about, how it was chosen, and its cosine to the person's centroid."""

    face_index: int
    by: str  # "centroid" | "largest"
    similarity: float | None
    area_ratio: float


def _closest(faces: list, centroid: np.ndarray) -> tuple[int, float, float]:
    """(face index, cosine, area ratio) of the face nearest the centroid."""
    best = max((f for f in faces if f[1] is not None), key=lambda f: float(f[1] @ centroid / np.linalg.norm(f[1])))
    return best[0], float(best[1] @ centroid / np.linalg.norm(best[1])), best[2]


def choose_subjects(rows: list[dict], rules: CurationRules) -> dict[int, Subject]:
    """The subject face of every photo with a face.

    In a 2-3 face photo the largest face may be a bystander, so the subject is the face closest to
    the person's robust centroid. The centroid is seeded from the largest faces of the photos whose
    face count is within the rules, then rebuilt from the chosen subjects. Persons with fewer than
    ``min_person_images`` such photos have no centroid: their subject is the largest face.
    """
    by_person: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if any(f[1] is not None for f in r["faces"]):
            by_person[r["person"]].append(r)
    out: dict[int, Subject] = {}
    for person_rows in by_person.values():
        reference = [r for r in person_rows if rules.min_faces <= (r["face_count"] or 0) <= rules.max_faces]
        if len(reference) < rules.min_person_images:
            for r in person_rows:
                f = r["faces"][0]
                out[r["image_id"]] = Subject(f[0], "largest", None, f[2])
            continue
        seed = np.stack([next(f[1] for f in r["faces"] if f[1] is not None) for r in reference])
        centroid = robust_centroid(seed, rules.identity_threshold)
        # rebuild from the faces nearest the first centroid: bystanders no longer pull it
        centroid = robust_centroid(np.stack([r["faces"][_closest(r["faces"], centroid)[0]][1] for r in reference]),
                                   rules.identity_threshold)
        for r in person_rows:
            index, sim, ratio = _closest(r["faces"], centroid)
            out[r["image_id"]] = Subject(index, "centroid", sim, ratio)
    return out


@dataclass
class CurationReport:
    total: int
    passed: int
    outliers: int
    rules: dict

    def as_dict(self) -> dict:
        return {"total": self.total, "passed": self.passed, "failed": self.total - self.passed,
                "identity_outliers": self.outliers, "rules": self.rules}


def curation_rules(ws: Workspace, **overrides) -> CurationRules:
    """The workspace's last-used rules with ``overrides`` applied (None means keep)."""
    return CurationRules.from_dict(ws.store.get_setting("curation_rules")).replace(**overrides)


#: images curated per part: whole persons (the identity check needs a person's photos together)
PART_IMAGES = 20_000


def judge(rows: list[dict], rules: CurationRules) -> list[dict]:
    """The verdict of every row (whole persons: their centroids come from these rows)."""
    subjects = choose_subjects(rows, rules)
    results = []
    for r in rows:
        subject = subjects.get(r["image_id"])
        reasons = rule_reasons(r, rules, subject.area_ratio if subject else None)
        sim = subject.similarity if subject else None
        outlier = sim is not None and sim < rules.identity_threshold
        if outlier and rules.reject_outliers:
            reasons.append("identity_outlier")
        results.append({"image_id": r["image_id"], "passed": not reasons, "reasons": reasons,
                        "reasons_mask": reasons_mask(reasons),
                        "identity_sim": None if sim is None else round(sim, 4), "outlier": outlier,
                        "subject_face": subject.face_index if subject else None,
                        "subject_by": subject.by if subject else None, "analysis_rev": r["rev"]})
    return results


def curate(ws: Workspace, rules: CurationRules | None = None, run_id: int | None = None,
           track: Callable[..., Iterable] | None = None) -> CurationReport:
    """Judge every image against ``rules`` (default: the workspace's last rules) and store verdicts.

    Read, judged and written a part of whole persons at a time (:data:`PART_IMAGES` images), so
    memory stays bounded at millions of images; ``track`` counts parts.
    """
    rules = rules or curation_rules(ws)
    parts = list(ws.store.person_groups(PART_IMAGES))
    total = passed = outliers = 0
    for persons in (track(parts, total=len(parts), desc="curate", unit="part") if track else parts):
        results = judge(ws.store.curation_inputs(persons), rules)
        ws.store.save_curation(results, run_id=run_id)
        total += len(results)
        passed += sum(r["passed"] for r in results)
        outliers += sum(r["outlier"] for r in results)
    ws.store.finish_curation(rules.to_dict())
    return CurationReport(total=total, passed=passed, outliers=outliers, rules=rules.to_dict())
