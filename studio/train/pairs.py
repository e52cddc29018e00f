"""Cross-training data: person splits, (target i, face j) pairs of one person, and their manifest.

The paper's method (§4.2.1) generates image i of a person while conditioning on the face of a
*different* image j of the same person, so the model learns to change expression and pose instead
of copying the input face. Three rules follow from that:

* splits are made over persons, never single images, so no test person's face reaches training;
* a pair's two photos must really differ: the same photo crawled twice, re-encoded or re-cropped
  (a perceptual-hash match, or a face cosine above a threshold) teaches copying and is excluded;
* the manifest is the CrossFaceID / InstantID training JSONL: the target's image, caption, box and
  landmarks, and the embedding file of the paired face j.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..dataset.export import CAPTION_POLICIES, ExportError, caption_counts, check_packs, write_embedding, write_image
from ..images import ImageError, load_rgb
from ..store import SPLITS
from ..workspace import Workspace, atomic_write_bytes, writable_dir

STRATEGIES = {
    "random": "any other photo of the person (the paper's)",
    "contrast": "prefer a photo whose pose or expression tag differs from the target's; random when none does",
}
#: tags that describe an expression (the vocabulary's others are accessories or pose)
EXPRESSION_TAGS = frozenset({"smiling", "laughing", "sad", "angry", "surprised", "neutral", "mouth open", "eyes closed"})
MISSING_CAPTION = ("skip", "template", "error")
DEFAULT_TEMPLATE = "a photo of a person"
DEFAULT_SHARES = (0.8, 0.1, 0.1)


class PairingError(ValueError):
    """The split or pairs cannot be made as asked; the message says why and what to do."""


def _rank(seed: int, name: str) -> float:
    """A person's stable place in [0, 1) for ``seed``: adding persons never moves the others."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def _quota(n: int, shares: tuple[float, float, float]) -> list[int]:
    """Persons per split: largest remainders, and one for each non-zero share when there are enough persons."""
    raw = [n * s for s in shares]
    counts = [int(r) for r in raw]
    for k in sorted(range(3), key=lambda k: raw[k] - counts[k], reverse=True)[: n - sum(counts)]:
        counts[k] += 1
    if n >= sum(1 for s in shares if s > 0):
        for k in range(3):
            if shares[k] > 0 and counts[k] == 0:
                donor = max(range(3), key=lambda d: counts[d])
                counts[donor] -= 1
                counts[k] += 1
    return counts


def parse_shares(text: str | tuple | list) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' (train, validation, test) -> shares that sum to 1."""
    try:
        parts = [float(p) for p in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        raise PairingError(f"shares must be three numbers train,validation,test (e.g. 0.8,0.1,0.1); got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or not 0.999 <= sum(parts) <= 1.001 or parts[0] <= 0:
        raise PairingError(f"shares must be three non-negative numbers train,validation,test summing to 1 with a "
                           f"train share above 0; got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def parse_pins(items: list[str] | None) -> dict[str, str]:
    """['NAME=test', ...] -> {NAME: 'test'}: persons a researcher places by hand."""
    pins = {}
    for item in items or []:
        name, sep, split = item.rpartition("=")
        if not sep or not name or split not in SPLITS:
            raise PairingError(f"--person takes NAME=SPLIT with SPLIT one of {', '.join(SPLITS)}; got {item!r}")
        pins[name] = split
    return pins


def assign_splits(ws: Workspace, shares=DEFAULT_SHARES, seed: int = 0, reassign: bool = False,
                  pins: dict[str, str] | None = None, run_id: int | None = None) -> dict:
    """Split the persons that have kept images into train / validation / test.

    A stored split is kept (new persons are placed by their stable rank) unless ``reassign``:
    moving a person between splits after training or evaluating would leak test faces.
    ``pins`` places named persons by hand (e.g. a held-out evaluation set), before the shares.
    """
    shares = parse_shares(shares)
    pins = pins or {}
    persons = ws.store.kept_persons()
    if not persons:
        raise PairingError("no person has a kept image yet: ingest, analyze and curate first")
    unknown = sorted(set(pins) - {name for _, name, _ in persons})
    if unknown:
        raise PairingError(f"--person names persons without a kept image: {', '.join(unknown)}")
    existing = ws.store.splits()
    moved = sorted(n for n, s in pins.items() if n in existing and existing[n] != s)
    if moved and not reassign:
        raise PairingError(f"{', '.join(moved)} already belong to another split; moving a person after training or "
                           "evaluation leaks faces between splits. Pass --reassign to split everyone again.")
    pinned = {pid: pins[name] for pid, name, _ in persons if name in pins}
    persons = [p for p in persons if p[1] not in pins]
    if existing and not reassign:
        new = [(pid, name) for pid, name, _ in persons if name not in existing]
        bounds = np.cumsum(shares)
        assignment = {pid: SPLITS[min(int(np.searchsorted(bounds, _rank(seed, name), side="right")), 2)]
                      for pid, name in new}
    else:
        ordered = sorted(((pid, name) for pid, name, _ in persons), key=lambda p: _rank(seed, p[1]))
        counts = _quota(len(ordered), shares)
        labels = [s for s, c in zip(SPLITS, counts) for _ in range(c)]
        assignment = {pid: label for (pid, _), label in zip(ordered, labels)}
    assignment.update(pinned)
    ws.store.save_splits(assignment, seed, run_id, replace=reassign or not existing)
    table = ws.store.split_counts()
    return {"assigned": len(assignment), "kept_earlier": 0 if (reassign or not existing) else len(existing),
            "seed": seed, "shares": list(shares), "pinned": pins, "splits": table}


# -- pairs -------------------------------------------------------------------------------------

def phashes(path: Path, box: tuple[float, float, float, float] | None) -> tuple[str, str | None]:
    """64-bit perceptual hashes (DCT, hex) of the upright photo and of its subject face's box.

    The whole-photo hash catches a re-encoded or slightly cropped copy; the face-box hash
    catches a re-framed crop of the same shot, whose whole-photo hash differs.
    """
    import imagehash
    from PIL import Image

    rgb = load_rgb(path).rgb
    whole = str(imagehash.phash(Image.fromarray(rgb)))
    if box is None:
        return whole, None
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    h, w = rgb.shape[:2]
    crop = rgb[max(0, y1):min(h, y2), max(0, x1):min(w, x2)]
    return whole, (str(imagehash.phash(Image.fromarray(crop))) if crop.size else None)


def _hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def near_duplicate(a: dict, b: dict, max_hash_distance: int, max_face_cos: float) -> str | None:
    """Why two photos of a person are the same photo ('phash', 'face_phash', 'face'), or None."""
    for key in ("phash", "face_phash"):
        if a[key] and b[key] and _hamming(a[key], b[key]) <= max_hash_distance:
            return key
    if a["emb"] is not None and b["emb"] is not None and float(a["emb"] @ b["emb"]) >= max_face_cos:
        return "face"
    return None


def make_pairs(ws: Workspace, split: str = "train", strategy: str = "random", per_image: int = 1, seed: int = 0,
               max_hash_distance: int = 6, max_face_cos: float = 0.95, run_id: int | None = None,
               track: Callable | None = None) -> dict:
    """Pair every kept image i of ``split`` with ``per_image`` other photos j of the same person.

    Replaces that split's earlier pairs. Returns counts, who was left out and why, and statistics.
    """
    if split not in ("train", "validation"):
        raise PairingError(f"pairs are made for the train or validation split, not {split!r}: test persons are "
                           "kept for evaluation and never enter a training pair")
    if strategy not in STRATEGIES:
        raise PairingError(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
    if per_image < 1:
        raise PairingError(f"per_image must be at least 1, got {per_image}")
    rows = ws.store.pairing_candidates(split)
    if not rows:
        assigned = ws.store.splits()
        why = ("no person is split yet: run `python -m studio split` first" if not assigned
               else f"the {split} split has no kept image")
        raise PairingError(f"nothing to pair: {why}")
    unreadable = [{"image_id": r["id"], "person": r["person"], "reason": "unreadable",
                   "detail": f"{r['media_path']}: the photo's file is missing"}
                  for r in rows if not ws.media_path(r["media_path"]).is_file()]
    missing = {u["image_id"] for u in unreadable}
    todo = [r for r in rows if not r["phash"] and r["id"] not in missing]
    fresh = {}
    for r in (track(todo, desc="perceptual hashes") if track else todo):
        box = (r["x1"], r["y1"], r["x2"], r["y2"]) if r["x1"] is not None else None
        try:
            fresh[r["id"]] = phashes(ws.media_path(r["media_path"]), box)
        except (ImageError, OSError) as exc:
            unreadable.append({"image_id": r["id"], "person": r["person"], "reason": "unreadable", "detail": str(exc)})
    if fresh:
        ws.store.save_phashes(fresh)
    skip = {u["image_id"] for u in unreadable}  # a photo that cannot be read is never half of a pair
    rows = [r for r in rows if r["id"] not in skip]
    tags = ws.store.tags_by_image(r["id"] for r in rows) if strategy == "contrast" else {}
    people: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        emb = None
        if r["embedding"] is not None:
            emb = np.frombuffer(r["embedding"], dtype=np.float32)
            emb = emb / (np.linalg.norm(emb) or 1.0)
        people[r["person"]].append({"id": r["id"], "pose": r["pose"], "emb": emb,
                                    "phash": r["phash"] or fresh.get(r["id"], (None, None))[0],
                                    "face_phash": r["face_phash"] or fresh.get(r["id"], (None, None))[1],
                                    "expr": tags.get(r["id"], set()) & EXPRESSION_TAGS})
    pairs: list[tuple[int, int]] = []
    left_out_persons, left_out_images = [], list(unreadable)
    excluded = Counter()
    for person, images in sorted(people.items()):
        if len(images) < 2:
            left_out_persons.append({"person": person, "reason": "one_usable_image",
                                     "detail": "a person needs at least two kept photos to pair"})
            continue
        dup: set[tuple[int, int]] = set()
        for x in range(len(images)):
            for y in range(x + 1, len(images)):
                why = near_duplicate(images[x], images[y], max_hash_distance, max_face_cos)
                if why:
                    dup |= {(images[x]["id"], images[y]["id"]), (images[y]["id"], images[x]["id"])}
                    excluded[why] += 2  # both directions are pairs that will not be made
        rng = random.Random(f"{seed}:{person}")
        made = 0
        for i in images:
            options = [j for j in images if j["id"] != i["id"] and (i["id"], j["id"]) not in dup]
            if not options:
                left_out_images.append({"image_id": i["id"], "person": person, "reason": "only_near_duplicates"})
                continue
            picked: list[dict] = []
            if strategy == "contrast":
                differ = [j for j in options if j["pose"] != i["pose"] or (j["expr"] and j["expr"] != i["expr"])]
                picked = rng.sample(differ, min(per_image, len(differ)))
            rest = [j for j in options if j not in picked]
            picked += rng.sample(rest, min(per_image - len(picked), len(rest)))
            pairs += [(i["id"], j["id"]) for j in picked]
            made += len(picked)
        if not made:
            left_out_persons.append({"person": person, "reason": "only_near_duplicates",
                                     "detail": "every other photo of this person is a near-duplicate"})
    ws.store.save_pairs(split, pairs, strategy, seed, run_id)
    stats = pair_statistics(ws, split)
    return {"split": split, "strategy": strategy, "seed": seed, "per_image": per_image, "pairs": len(pairs),
            "excluded_near_duplicates": sum(excluded.values()), "excluded_by": dict(excluded),
            "max_hash_distance": max_hash_distance, "max_face_cos": max_face_cos,
            "left_out_persons": left_out_persons, "left_out_images": left_out_images, **stats}


def _group_by_target(lines: list[str]) -> list[str]:
    """One line per target, its paired faces as ``face_candidates`` (in pair order)."""
    grouped: dict[int, dict] = {}
    for text in lines:
        d = json.loads(text)
        g = grouped.setdefault(d["target_id"], {**d, "face_candidates": [], "face_ids": []})
        g["face_candidates"].append(d["insightface_feature_file"])
        g["face_ids"].append(d["face_id"])
    return [json.dumps(g, ensure_ascii=False) for g in grouped.values()]


def pair_statistics(ws: Workspace, split: str = "train") -> dict:
    """Pairs per person, and how often the pose / expression tags change between target and face."""
    rows = ws.store.pairs(split)
    per_person = Counter(r["person"] for r in rows)
    tags = ws.store.tags_by_image({r["target_id"] for r in rows} | {r["face_id"] for r in rows})
    pose_change = Counter("changes" if r["target_pose"] != r["face_pose"] else "same" for r in rows)
    expr_change = Counter()
    for r in rows:
        a, b = tags[r["target_id"]] & EXPRESSION_TAGS, tags[r["face_id"]] & EXPRESSION_TAGS
        expr_change["unknown" if not a or not b else ("changes" if a != b else "same")] += 1
    transitions = Counter(f"{r['face_pose'] or '?'} -> {r['target_pose'] or '?'}" for r in rows)
    return {"persons_paired": len(per_person), "pairs_per_person": dict(sorted(per_person.items())),
            "pose_change": dict(pose_change), "expression_change": dict(expr_change),
            "pose_transitions": dict(transitions.most_common())}


# -- manifest ----------------------------------------------------------------------------------

def official_command(jsonl: Path, out: Path, paths: str) -> str:
    """The CrossFaceID / MFaceTech trainer (``train_instantId_sdxl.py``) reading this manifest: its dataset
    class joins ``--data_root_path`` with each line's paths (an absolute path stays itself)."""
    root = "/" if paths == "absolute" else str(out.resolve())
    return "\n".join([
        'accelerate launch --mixed_precision="fp16" train_instantId_sdxl.py \\',
        "  --pretrained_model_name_or_path stabilityai/stable-diffusion-xl-base-1.0 \\",
        "  --controlnet_model_name_or_path InstantX/InstantID/ControlNetModel \\",
        "  --pretrained_ip_adapter_path InstantX/InstantID/ip-adapter.bin \\",
        "  --image_encoder_path h94/IP-Adapter/sdxl_models/image_encoder \\",
        f"  --data_json_file {jsonl.resolve()} \\",
        f"  --data_root_path {root} \\",
        "  --output_dir OUTPUT_DIR --clip_proc_mode orig_crop --resolution 512 \\",
        "  --learning_rate 1e-5 --weight_decay=0.01 --num_train_epochs 5 --train_batch_size 8"])


def manifest_readme(result: dict, paths: str) -> str:
    return f"""# Cross-training manifest: {result['split']} split

Written by CrossFaceID Studio: {result['lines']} line(s) from {result['pairs']} pair(s) of {result['persons']} person(s).
Each line is a target image i (`image_file`, its caption `additional_feature`, face `bbox`, 5-point
`landmarks`) with the ArcFace embedding of the face of another image j of the same person
(`insightface_feature_file`, a float32 `.npy`; `face_image_file` is that photo). Paths are {paths}
{'to this folder' if paths == 'relative' else ''}.

## Train with the studio

    python -m studio train --manifest {result['jsonl']} ...

## Train with the official CrossFaceID / InstantID trainer

Its dataset class joins `--data_root_path` with the paths of each line, so with {paths} paths it is
{'this folder' if paths == 'relative' else '`/`'}. Point the model paths at your copies of the weights:

```bash
{result['official_command']}
```
"""


def export_manifest(ws: Workspace, out_dir: str | Path, split: str = "train", *, captions: str = "approved",
                    missing_caption: str = "skip", template: str = DEFAULT_TEMPLATE, allow_other_pack: bool = False,
                    candidates: bool = False, paths: str = "relative", run_id: int | None = None,
                    author: str = "studio") -> dict:
    """Write ``out_dir/<split>.jsonl`` (+ images and embeddings) for the stored pairs of ``split``.

    Each line is a target image i with its caption, box and landmarks, and the embedding of the
    paired face j (``insightface_feature_file``), the layout CrossFaceID's own script reads.
    With ``candidates`` a target's pairs become one line listing every paired face
    (``face_candidates``; the first stays ``insightface_feature_file``): the trainer draws one per
    epoch, the paper's "a different random face"; pair with ``--per-image K`` for K of them.
    ``missing_caption``: ``skip`` the pair, fall back to ``template`` (counted), or ``error``.
    ``paths``: ``relative`` to the manifest's folder (the official trainer's ``--data_root_path``) or
    ``absolute``. ``out_dir/README.md`` gives the official trainer's command for this manifest.
    """
    if paths not in ("relative", "absolute"):
        raise ExportError(f"paths must be relative or absolute, got {paths!r}")
    if captions not in CAPTION_POLICIES:
        raise ExportError(f"captions must be one of {list(CAPTION_POLICIES)}, got {captions!r}")
    if missing_caption not in MISSING_CAPTION:
        raise ExportError(f"missing_caption must be one of {MISSING_CAPTION}, got {missing_caption!r}")
    if missing_caption == "template" and not template.strip():
        raise ExportError("the caption template is empty; give the text used when an image has no caption")
    pairs = ws.store.pairs(split)
    if not pairs:
        raise ExportError(f"the {split} split has no pairs: run `python -m studio pairs --split {split}` first")
    ids = sorted({p["target_id"] for p in pairs} | {p["face_id"] for p in pairs})
    table = {r["id"]: r for r in ws.store.image_table(ids)}
    check_packs(sorted({r["pack"] for r in table.values() if r["pack"]}), allow_other_pack)
    current = ws.store.current_caption_flags()
    without_set = {p["target_id"] for p in pairs
                   if not (table[p["target_id"]]["caption"] and caption_counts(*current.get(p["target_id"], (None, [])), captions))}
    without = sorted(without_set)
    if without and missing_caption == "error":
        raise ExportError(f"{len(without)} target image(s) have no {captions} caption ({CAPTION_POLICIES[captions]}); "
                          f"first ids: {without[:10]}. Review them, or choose --missing-caption skip|template.")
    out = Path(out_dir)
    try:
        writable_dir(out)
    except OSError as exc:
        raise ExportError(f"cannot write the manifest to {out}: {exc.strerror or exc}") from None
    lines, skipped, templated, unwritable = [], 0, 0, []
    subjects = {i: ws.store.subject_face(i) for i in ids}
    for p in pairs:
        target, face = table[p["target_id"]], table[p["face_id"]]
        t_face, f_face = subjects[p["target_id"]], subjects[p["face_id"]]
        if t_face is None or f_face is None or f_face.embedding is None:
            unwritable.append({"target_id": p["target_id"], "face_id": p["face_id"],
                               "error": "no subject face or embedding (analyze and curate again)"})
            continue
        caption, source = target["caption"] or "", "caption"
        if p["target_id"] in without_set:
            if missing_caption == "skip":
                skipped += 1
                continue
            caption, source = template, "template"
        try:
            image_file, face_file = write_image(ws, out, target), write_image(ws, out, face)
            embedding_file = write_embedding(out, face, f_face)
        except (ImageError, OSError) as exc:  # that pair only; the line is never written half
            unwritable.append({"target_id": p["target_id"], "face_id": p["face_id"], "error": str(exc)})
            continue
        if paths == "absolute":
            image_file, face_file, embedding_file = (str((out / f).resolve()) for f in (image_file, face_file,
                                                                                      embedding_file))
        templated += source == "template"
        lines.append(json.dumps({
            "image_file": image_file,
            "additional_feature": caption,
            "bbox": [round(v, 2) for v in t_face.bbox],
            "landmarks": t_face.kps,
            "insightface_feature_file": embedding_file,
            "face_image_file": face_file,
            "person": target["person"], "target_id": p["target_id"], "face_id": p["face_id"],
            "caption_source": source, "face_pack": face["pack"],
        }, ensure_ascii=False))
    if candidates:
        lines = _group_by_target(lines)
    data = ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")
    jsonl = out / f"{split}.jsonl"
    atomic_write_bytes(jsonl, data)
    result = {"split": split, "lines": len(lines), "pairs": len(pairs), "skipped_without_caption": skipped,
              "skipped_unreadable": unwritable,
              "template_captions": templated, "template": template if templated else None, "captions": captions,
              "jsonl": str(jsonl), "data_sha256": hashlib.sha256(data).hexdigest(),
              "persons": len({p["person"] for p in pairs})}
    warnings = []
    if without:
        warnings.append(f"{len(without)} target image(s) have no {captions} caption: "
                        + (f"{skipped} pair(s) left out" if missing_caption == "skip"
                           else f"{templated} line(s) use the template {template!r}"))
    if unwritable:
        warnings.append(f"{len(unwritable)} pair(s) left out because a photo could not be read or has no face: "
                        f"{unwritable[:3]}")
    if warnings:
        result["warning"] = "; ".join(warnings)
    result["official_command"] = official_command(jsonl, out, paths)
    atomic_write_bytes(out / "README.md", manifest_readme(result, paths).encode())
    settings = {"split": split, "captions": captions, "missing_caption": missing_caption, "template": template,
                "allow_other_pack": allow_other_pack, "candidates": candidates, "paths": paths}
    atomic_write_bytes(out / f"{split}.manifest.json",
                       json.dumps({**result, **settings, "run_id": run_id}, indent=2).encode())
    ws.store.record_export(out_dir=str(out.resolve()), settings={"kind": "pairs", **settings}, result=result,
                           run_id=run_id, author=author)
    return result
