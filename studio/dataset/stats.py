"""Dataset statistics: the paper's Table 1 before and after curation, and per-reason counts."""
from __future__ import annotations

import statistics
from collections import Counter

from ..workspace import Workspace


TABLE1_ROWS = [("persons", "Persons"), ("images", "Images"), ("avg_per_person", "Avg images / person"),
               ("median_per_person", "Median images / person"), ("max_per_person", "Max images / person"),
               ("min_per_person", "Min images / person")]


#: the pose labels of studio.dataset.faces.pose_from_kps, in the order the plot shows them
POSES = ("frontal", "side", "looking up", "looking down")


def table1(images_per_person: list[int]) -> dict:
    """Persons, images, and average / median / max / min images per person (paper, Table 1)."""
    counts = [c for c in images_per_person if c > 0]
    if not counts:
        return {"persons": 0, "images": 0, "avg_per_person": 0.0, "median_per_person": 0.0,
                "max_per_person": 0, "min_per_person": 0}
    return {
        "persons": len(counts),
        "images": sum(counts),
        "avg_per_person": round(sum(counts) / len(counts), 2),
        "median_per_person": float(statistics.median(counts)),
        "max_per_person": max(counts),
        "min_per_person": min(counts),
    }


def image_list(ws: Workspace) -> list[dict]:
    """Every image with person, status, reasons, faces, ratio, pose and outlier flag."""
    out = []
    for r in ws.store.image_table():
        status = "pending" if r["passed"] is None else ("pass" if r["passed"] else "fail")
        out.append({
            "id": r["id"], "person": r["person"], "media_path": r["media_path"], "source": r["source"],
            "sha256": r["sha256"], "width": r["width"], "height": r["height"], "original_mode": r["original_mode"],
            "exif_rotated": r["exif_rotated"], "status": status, "reasons": r["reasons"] or [],
            "face_count": r["face_count"], "face_ratio": None if r["largest_face_ratio"] is None else round(r["largest_face_ratio"], 4),
            "pose": r["pose"], "yaw": r["yaw"], "pitch": r["pitch"],
            "identity_sim": r["identity_sim"], "outlier": r["outlier"], "subject_face": r["subject_face"],
            "verdict_stale": r["verdict_stale"], "face_pack": r["pack"],
            "analysis_error": r["analysis_error"], "caption": r["caption"], "caption_status": r["caption_status"],
        })
    return out


def dataset_stats(ws: Workspace, per_person: tuple[list[int], list[int]] | None = None) -> dict:
    """Table 1 before/after curation, rejection counts per reason, ingest problems, pose counts.

    Read from the store's tallies (kept by triggers), so it stays fast at millions of images.
    ``per_person``: the images-per-person counts before and after curation, when already read.
    """
    from ..codes import REASONS

    store = ws.store
    status = store.status_counts()
    reasons = {name: n for name, n in zip(REASONS, store.reason_bit_counts(len(REASONS))) if n}
    problems = store.problem_counts()
    before, after = per_person or (store.images_per_person(), store.images_per_person(passed_only=True))
    return {
        "table1": {"before_curation": table1(before), "after_curation": table1(after)},
        # Table 1 of each person split (kept images), once persons are split for cross-training
        "table1_by_split": {s: table1(store.images_per_person(passed_only=True, split=s))
                            for s in ("train", "validation", "test") if s in set(store.splits().values())},
        "status": {name: status[code] for code, name in ((1, "pass"), (2, "fail"), (0, "pending")) if status.get(code)},
        "rejections_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "ingest_problems_by_reason": dict(sorted(problems.items(), key=lambda kv: (-kv[1], kv[0]))),
        "pose_after_curation": store.pose_counts(passed_only=True),
        "rules": store.get_setting("curation_rules"),
        "stale_verdicts": store.stale_verdicts(),
    }


def stale_message(n: int) -> str:
    """What to say when verdicts were computed from older analyses than the images have now."""
    if not n:
        return ""
    return (f"{n} curation verdict{'s are' if n != 1 else ' is'} stale: the face analysis changed after curation "
            "(curate ran while analyze was writing). Run `python -m studio curate` to update them.")


def format_table1(stats: dict) -> str:
    """Table 1 as Markdown, for the CLI and the README of an export."""
    t = stats["table1"]
    lines = ["| | before curation | after curation |", "|---|---:|---:|"]
    for k, label in TABLE1_ROWS:
        lines.append(f"| {label} | {t['before_curation'][k]} | {t['after_curation'][k]} |")
    return "\n".join(lines)


def distribution_frames(ws: Workspace) -> dict:
    """Long-form tables for the Statistics plots (rejections, images per person, pose, attributes)."""
    import pandas as pd

    per_person = ws.store.images_per_person(), ws.store.images_per_person(passed_only=True)
    stats = dataset_stats(ws, per_person)
    reasons = pd.DataFrame(
        [(k, v, "curation") for k, v in stats["rejections_by_reason"].items()]
        + [(k, v, "ingest") for k, v in stats["ingest_problems_by_reason"].items()],
        columns=["reason", "images", "stage"],
    )
    rows = []
    for stage, counts in zip(("before curation", "after curation"), per_person):
        histogram = Counter(c for c in counts if c > 0)
        # a text label, never a number: a plot reads a numeric x as a continuous axis and draws no bars
        rows += [(f"{n} image{'s' if n != 1 else ''}", persons, stage, n) for n, persons in histogram.items()]
    hist = pd.DataFrame(rows, columns=["images per person", "persons", "stage", "n"]).sort_values("n")
    counted = stats["pose_after_curation"]
    # every pose, none counted too: a workspace of frontal photos shows what it lacks
    poses = pd.DataFrame([(p, counted.get(p, 0)) for p in POSES] + sorted((p, n) for p, n in counted.items()
                                                                        if p not in POSES),
                         columns=["pose", "images"])
    tags = pd.DataFrame(ws.store.tag_counts(passed_only=True), columns=["attribute", "images"])
    return {"stats": stats, "reasons": reasons, "images_per_person": hist.drop(columns="n").reset_index(drop=True),
            "pose": poses,
            "attributes": tags}
