"""The paper's curation rules and the identity-consistency check.

Curation reads only stored analyses, so changing a threshold re-curates in milliseconds
without touching the face models. Reasons are machine-readable codes:

``not_analyzed``, ``analysis_failed``, ``no_face``, ``too_few_faces``, ``too_many_faces``,
``low_resolution``, ``small_face``, ``identity_outlier``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .config import CurationRules
from .workspace import Workspace

REASONS = (
    "not_analyzed", "analysis_failed", "no_face", "too_few_faces", "too_many_faces",
    "low_resolution", "small_face", "identity_outlier",
)


def reasons_mask(reasons: list[str]) -> int:
    """Reasons as bits (position in REASONS), so browsing can filter on any of them with one index-free test."""
    return sum(1 << REASONS.index(r) for r in set(reasons))


def rule_reasons(row: dict, rules: CurationRules) -> list[str]:
    """Reasons one image fails the paper's rules (empty list: it passes)."""
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
    if n > 0 and (row["largest_face_ratio"] or 0.0) < rules.min_face_ratio:
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


def identity_similarities(rows: list[dict], rules: CurationRules) -> dict[int, float]:
    """Cosine of each image's main face to its person's robust centroid.

    The centroid is built from images whose face count is within the rules (in a crowd photo
    the largest face may be anyone); every image with a face gets a similarity. Persons with
    fewer than ``min_person_images`` such images are not judged.
    """
    by_person: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["main_embedding"] is not None:
            by_person[r["person"]].append(r)
    out: dict[int, float] = {}
    for person_rows in by_person.values():
        reference = [r for r in person_rows if rules.min_faces <= (r["face_count"] or 0) <= rules.max_faces]
        if len(reference) < rules.min_person_images:
            continue
        centroid = robust_centroid(np.stack([r["main_embedding"] for r in reference]), rules.identity_threshold)
        for r in person_rows:
            e = r["main_embedding"]
            out[r["image_id"]] = float(e @ centroid / np.linalg.norm(e))
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


def curate(ws: Workspace, rules: CurationRules | None = None) -> CurationReport:
    """Judge every image against ``rules`` (default: the workspace's last rules) and store verdicts."""
    rules = rules or curation_rules(ws)
    rows = ws.store.curation_inputs()
    sims = identity_similarities(rows, rules)
    results = []
    for r in rows:
        reasons = rule_reasons(r, rules)
        sim = sims.get(r["image_id"])
        outlier = sim is not None and sim < rules.identity_threshold
        if outlier and rules.reject_outliers:
            reasons.append("identity_outlier")
        results.append({"image_id": r["image_id"], "passed": not reasons, "reasons": reasons,
                        "reasons_mask": reasons_mask(reasons),
                        "identity_sim": None if sim is None else round(sim, 4), "outlier": outlier})
    ws.store.save_curation(results, rules.to_dict())
    return CurationReport(total=len(results), passed=sum(r["passed"] for r in results),
                          outliers=sum(r["outlier"] for r in results), rules=rules.to_dict())
