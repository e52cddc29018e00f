"""A workspace as a Hugging Face dataset: an ``imagefolder`` with its metadata and a dataset card.

``datasets.load_dataset("imagefolder", data_dir=OUT)`` reads it as it is (one ``train`` split): the
``image`` column from the files, and from ``metadata.jsonl`` the person, caption, curation verdict,
face box, five keypoints and the 512-d face embedding of each photo. ``README.md`` is the dataset
card (the curation rules, the counts, the face pack, where the photos came from). ``push_to_hub``
uploads the folder with ``huggingface_hub``'s own ``upload_folder``.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from ..workspace import Workspace, atomic_write_bytes, atomic_writer
from .curate import curation_rules
from .export import CAPTION_POLICIES, ExportError, _candidates, check_packs, write_image


def export_hf(ws: Workspace, out_dir: str | Path, include_failed: bool = False, *, captions: str = "approved",
              allow_other_pack: bool = False, track: Callable[..., Iterable] | None = None) -> dict:
    """Write ``out_dir`` as an imagefolder dataset (images, ``metadata.jsonl``, ``README.md``); returns counts.

    Every image with a subject face is a row (``include_failed``: failed ones too, with their reasons);
    a caption that does not count under ``captions`` is written empty, with its status beside it.
    """
    if captions not in CAPTION_POLICIES:
        raise ExportError(f"captions must be one of {list(CAPTION_POLICIES)}, got {captions!r}")
    packs = ws.store.export_packs(passed_only=not include_failed)
    check_packs(packs, allow_other_pack)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: Iterable = _candidates(ws, include_failed, captions)
    if track is not None:
        rows = track(rows, desc="export (hf)", unit="image")
    persons, verdicts, poses, sources = Counter(), Counter(), Counter(), Counter()
    n = 0
    with atomic_writer(out / "metadata.jsonl") as fh:
        for r, face, caption in rows:
            if face is None:
                continue
            fh.write(json.dumps({
                "file_name": write_image(ws, out, r),
                "person": r["person"],
                "caption": caption,
                "caption_status": r["caption_status"] or "none",
                "passed": bool(r["passed"]),
                "reasons": r["reasons"] or [],
                "face_bbox": [round(float(v), 2) for v in face.bbox],
                "keypoints": [[round(float(x), 2), round(float(y), 2)] for x, y in face.kps],
                "embedding": [float(v) for v in face.embedding],
                "pose": face.pose,
                "face_pack": r["pack"],
                "width": r["width"], "height": r["height"],
                "studio_image_id": r["id"],
            }, ensure_ascii=False).encode("utf-8") + b"\n")
            n += 1
            persons[r["person"]] += 1
            verdicts["kept" if r["passed"] else "failed"] += 1
            poses[face.pose or "unknown"] += 1
            sources[_source_group(r["source"])] += 1
    result = {"format": "hf", "rows": n, "persons": len(persons), "kept": verdicts["kept"],
              "failed": verdicts["failed"], "face_packs": packs, "captions": captions,
              "metadata": str(out / "metadata.jsonl"), "card": str(out / "README.md")}
    atomic_write_bytes(out / "README.md", dataset_card(ws, result, poses, sources, include_failed).encode())
    return result


def _source_group(source: str | None) -> str:
    """Where a photo came from, at the level a card names it: its source folder (or file)."""
    if not source:
        return "unknown"
    parts = Path(source.split("#", 1)[0]).parts
    return str(Path(*parts[:-2])) if len(parts) > 2 else str(Path(*parts[:-1]) or source)


def dataset_card(ws: Workspace, result: dict, poses: Counter, sources: Counter, include_failed: bool) -> str:
    rules = curation_rules(ws)
    size = "n<1K" if result["rows"] < 1000 else "1K<n<10K" if result["rows"] < 10_000 else "10K<n<100K"
    source_lines = "\n".join(f"- `{s}`: {n} photo(s)" for s, n in sources.most_common(20))
    pose_lines = ", ".join(f"{p} {n}" for p, n in poses.most_common())
    return f"""---
license: other
license_name: source-photo-licences
task_categories:
- text-to-image
size_categories:
- {size}
tags:
- faces
- identity-preserving-generation
- crossfaceid
---

# Face photos per person, curated and captioned with CrossFaceID Studio

{result['rows']} photo(s) of {result['persons']} person(s): {result['kept']} kept by curation
{f"and {result['failed']} that failed it (with their reasons)" if include_failed else "(failed photos left out)"}.
Load it with `datasets.load_dataset("imagefolder", data_dir=...)` or from the Hub by its name.

## Columns

- `image`: the photo, upright (EXIF orientation applied).
- `person`: who the photo shows (one folder per person under `images/`).
- `caption`, `caption_status`: the caption counted under the `{result['captions']}` policy
  ({CAPTION_POLICIES[result['captions']]}), empty otherwise, and the status of its current version.
- `passed`, `reasons`: the curation verdict and why a photo failed.
- `face_bbox` (x1, y1, x2, y2), `keypoints` (eyes, nose, mouth corners), `pose`: the subject face.
- `embedding`: its 512-d ArcFace embedding (raw, not normalised) from the `{", ".join(result['face_packs'])}`
  face pack.

## Curation (the paper's rules)

{rules.min_faces}-{rules.max_faces} faces, both sides at least {rules.min_side} px, the largest face at least
{rules.min_face_ratio:.0%} of the photo; a photo whose face is far from its person's other photos (cosine
below {rules.identity_threshold} to the person's centroid, persons with {rules.min_person_images}+ photos)
{"is rejected as probably mislabelled" if rules.reject_outliers else "is flagged"}. Poses: {pose_lines}.

## Sources and licences

The photos keep the licences of their sources; this card cannot grant more. Check each source's
terms before redistributing. Photos per source folder:

{source_lines}
"""


def push_to_hub(out_dir: str | Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload an exported folder as a dataset repository; returns its URL. Refused without a token."""
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise ExportError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again "
                          f"(the dataset is written in {out_dir})")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset",
                               commit_message="CrossFaceID Studio export")
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/datasets/{repo_id}"
