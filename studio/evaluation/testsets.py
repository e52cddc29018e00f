"""Evaluation test sets (paper §5.1): who is generated, from which face, with which prompt.

* customization (as CrossFaceID-test): an input face of a person + a prompt asking for an
  attribute + (when the workspace has one) a real photo of the same person showing it. Items come
  from photos whose caption tags or keypoint pose show a scored attribute, with another photo of the
  person as the input face; ``ask`` adds items that ask for an attribute of every input face.
* fidelity (as Unsplash-50): a face + a neutral prompt.

Built from the persons of a split (the test split by default) or named persons, or imported from a
CSV / JSONL file. Each item keeps its input face's analysis (box, keypoints, embedding, pack), so
evaluation never re-detects it and Face Sim compares embeddings of one pack.
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

from ..dataset.attributes import compile_vocabulary, tags_for
from ..dataset.attributes import vocabulary as workspace_vocabulary
from .metrics import POSE_ATTRIBUTES, SCORED_ATTRIBUTES
from ..workspace import Workspace, atomic_write_bytes

KINDS = ("customization", "fidelity")
NEUTRAL_PROMPT = "a photo of a person"
#: attribute -> how a prompt asks for it
ASK_PHRASES = {
    "smiling": "smiling", "laughing": "laughing", "sad": "looking sad", "angry": "looking angry",
    "surprised": "looking surprised", "mouth open": "with the mouth open", "eyes closed": "with eyes closed",
    "glasses": "wearing glasses", "sunglasses": "wearing sunglasses", "hat": "wearing a hat", "beard": "with a beard",
    "mustache": "with a mustache", "side profile": "in side profile", "looking up": "looking up",
    "looking down": "looking down",
}
POSE_OF = {label: attr for attr, label in POSE_ATTRIBUTES.items()}


def attribute_prompt(attribute: str, template: str = NEUTRAL_PROMPT) -> str:
    return f"{template}, {ASK_PHRASES[attribute]}"


def _pack(row: dict) -> str:
    return (row.get("pack") or "?").split(":")[0]


def _face(row: dict) -> dict:
    return {"bbox": [row["x1"], row["y1"], row["x2"], row["y2"]], "kps": row["kps"],
            "size": [row["width"], row["height"]], "pose": row.get("pose")}


def _item(inp: dict, prompt: str, attribute: str | None = None, target: dict | None = None) -> dict:
    return {"person": inp["person"], "input_image_id": inp["id"], "input_path": inp["media_path"], "face": _face(inp),
            "embedding": inp["embedding"], "prompt": prompt, "attribute": attribute,
            "target_image_id": target["id"] if target else None, "target_path": target["media_path"] if target else None}


def parse_attributes(text: str | list[str] | None) -> list[str]:
    values = [a.strip() for a in (text.split(",") if isinstance(text, str) else text or []) if a.strip()]
    unknown = [a for a in values if a not in SCORED_ATTRIBUTES]
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; the scored ones are {list(SCORED_ATTRIBUTES)}")
    return values


def build_testset(ws: Workspace, name: str, kind: str, *, split: str | None = "test", persons: list[str] | None = None,
                  ask: list[str] | None = None, prompt: str = NEUTRAL_PROMPT, per_person: int = 0, seed: int = 0,
                  replace: bool = False, run_id: int | None = None) -> dict:
    """Build and store a test set from the workspace's kept, analysed photos; returns a summary."""
    if kind not in KINDS:
        raise ValueError(f"test set kind must be one of {KINDS}, got {kind!r}")
    name = _check_name(name)
    ask = parse_attributes(ask)
    if not (prompt or "").strip():
        raise ValueError("the prompt template is empty")
    rows = ws.store.testset_candidates(None if persons else split, persons)
    if persons:
        missing = sorted(set(persons) - {r["person"] for r in rows})
        if missing:
            raise ValueError(f"no kept, analysed photo of person(s) {missing}")
    if not rows:
        where = f"persons {persons}" if persons else f"the {split} split"
        raise ValueError(f"no kept, analysed photos in {where}: split persons first (`python -m studio split`) "
                         "or name persons")
    by_person: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_person[r["person"]].append(r)
    rng = random.Random(seed)
    items: list[dict] = []
    if kind == "fidelity":
        for person, photos in by_person.items():
            chosen = photos if not per_person else rng.sample(photos, min(per_person, len(photos)))
            items += [_item(p, prompt) for p in chosen]
    else:
        compiled = compile_vocabulary({k: v for k, v in workspace_vocabulary(ws).items() if k in SCORED_ATTRIBUTES})
        tags = ws.store.tags_by_image(r["id"] for r in rows)
        for person, photos in by_person.items():
            found = []
            for target in photos:  # a real photo showing an attribute, with another photo as the input face
                shown = set(tags.get(target["id"], ())) & set(SCORED_ATTRIBUTES)
                if not shown and target.get("caption"):
                    shown = set(tags_for(target["caption"], compiled))
                if target.get("pose") in POSE_OF:
                    shown.add(POSE_OF[target["pose"]])
                for attribute in sorted(shown):
                    inputs = [p for p in photos if p["id"] != target["id"] and attribute not in _shows(p, tags)]
                    inputs = inputs or [p for p in photos if p["id"] != target["id"]]
                    if inputs:
                        found.append(_item(rng.choice(inputs), attribute_prompt(attribute, prompt), attribute, target))
            for attribute in ask:
                found += [_item(p, attribute_prompt(attribute, prompt), attribute) for p in photos
                          if attribute not in _shows(p, tags)]
            if per_person and len(found) > per_person:
                found = rng.sample(found, per_person)
            items += found
    if not items:
        raise ValueError("no test items: no kept photo shows a scored attribute (caption tags or pose) with another "
                         "photo of the same person to take the face from; ask for attributes with --ask")
    packs = sorted({_pack(r) for r in rows if r["id"] in {i["input_image_id"] for i in items}})
    if len(packs) > 1:
        raise ValueError(f"the photos were analysed with different face packs {packs}: re-run analyze with one pack")
    settings = {"split": None if persons else split, "persons": persons, "ask": ask, "prompt": prompt,
                "per_person": per_person, "seed": seed}
    tid = ws.store.save_testset(name=name, kind=kind, source="workspace", settings=settings, pack=packs[0], items=items,
                                run_id=run_id, replace=replace)
    return summary(ws, name) | {"id": tid}


def _shows(photo: dict, tags: dict) -> set[str]:
    shown = set(tags.get(photo["id"], ()))
    if photo.get("pose") in POSE_OF:
        shown.add(POSE_OF[photo["pose"]])
    return shown


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 80 or any(c in name for c in "/\\\0\n"):
        raise ValueError("a test set needs a name of 1-80 characters without slashes or line breaks")
    return name


# -- import ---------------------------------------------------------------------------------------

def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a CSV (header row) or JSONL file; a line that is not an object is named."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"test set file {path} not found")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return [(n, dict(r)) for n, r in enumerate(csv.DictReader(fh), start=2)]
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path.name} line {n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path.name} line {n}: expected an object with input and prompt")
            rows.append((n, row))
    return rows


def import_testset(ws: Workspace, path: Path, name: str, kind: str, *, face_pack: str = "auto", replace: bool = False,
                   run_id: int | None = None, track=None) -> dict:
    """Items from a file: ``input`` (a photo path, relative to the file, or ``image:<id>``), ``prompt``,
    optional ``attribute`` (else read from the prompt), ``target`` and ``person``.

    Photos are copied into the workspace and analysed with ``face_pack``; a row that cannot be
    used (no face, unreadable photo, missing field) is reported by line and left out.
    """
    from ..dataset.faces import FaceAnalyzer, resolve_pack
    from ..images import ImageError, load_rgb, read_bytes

    if kind not in KINDS:
        raise ValueError(f"test set kind must be one of {KINDS}, got {kind!r}")
    name = _check_name(name)
    path = Path(path)
    rows = read_rows(path)
    pack = resolve_pack(face_pack)
    analyzer = FaceAnalyzer(pack)
    compiled = compile_vocabulary({k: v for k, v in workspace_vocabulary(ws).items() if k in SCORED_ATTRIBUTES})
    dest = ws.root / "testsets" / hashlib.sha256(name.encode()).hexdigest()[:12]
    items, problems = [], []
    kept: dict[int, dict] | None = None
    for n, row in (track(rows, desc="test items") if track else rows):
        where = f"{path.name} line {n}"
        try:
            prompt = str(row.get("prompt") or "").strip()
            if not prompt or "\0" in prompt:
                raise ValueError("prompt is missing or not text")
            attribute = str(row.get("attribute") or "").strip() or None
            if attribute is None and kind == "customization":
                found = tags_for(prompt, compiled)
                attribute = found[0] if found else None
            if attribute is not None:
                parse_attributes([attribute])
            item = {"prompt": prompt, "attribute": attribute, "person": str(row.get("person") or "") or None}
            source = str(row.get("input") or "").strip()
            if not source:
                raise ValueError("input is missing")
            if source.startswith("image:"):
                image_id = int(source[6:])
                if kept is None:  # read once for the whole file, not once per row
                    kept = {c["id"]: c for c in ws.store.testset_candidates(None, None)}
                c = kept.get(image_id)
                if c is None:
                    raise ValueError(f"workspace image {image_id} is not a kept, analysed photo")
                if _pack(c) != pack.name:
                    raise ValueError(f"workspace image {image_id} was analysed with pack {_pack(c)}, not {pack.name}")
                item.update(_item(c, prompt, attribute), person=item["person"] or c["person"])
            else:
                src = (path.parent / source) if not Path(source).is_absolute() else Path(source)
                data = read_bytes(src)
                rgb = load_rgb(src).rgb
                faces = analyzer.analyze(rgb)
                if not faces:
                    raise ValueError(f"no face found in {source}")
                f = faces[0]
                rel = _copy_in(ws, dest, data, src.suffix)
                item.update(input_path=rel, input_image_id=None, embedding=f["embedding"],
                            face={"bbox": f["bbox"], "kps": f["kps"], "size": [rgb.shape[1], rgb.shape[0]],
                                  "pose": f["pose"]})
            target = str(row.get("target") or "").strip()
            if target:
                tsrc = (path.parent / target) if not Path(target).is_absolute() else Path(target)
                tdata = read_bytes(tsrc)
                load_rgb(tsrc)  # readable
                item.update(target_path=_copy_in(ws, dest, tdata, tsrc.suffix), target_image_id=None)
            items.append(item)
        except (ValueError, ImageError, OSError) as exc:
            problems.append(f"{where}: {exc}")
    if not items:
        raise ValueError("no usable rows: " + "; ".join(problems[:5]))
    settings = {"file": str(path), "face_pack": pack.name, "rows": len(rows), "left_out": problems}
    tid = ws.store.save_testset(name=name, kind=kind, source=f"import:{path.name}", settings=settings, pack=pack.name,
                                items=items, run_id=run_id, replace=replace)
    return summary(ws, name) | {"id": tid, "left_out": problems}


def _copy_in(ws: Workspace, dest: Path, data: bytes, suffix: str) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    file = dest / (hashlib.sha256(data).hexdigest()[:24] + (suffix.lower() or ".img"))
    if not file.exists():
        atomic_write_bytes(file, data)
    return file.relative_to(ws.root).as_posix()


# -- views ----------------------------------------------------------------------------------------

def summary(ws: Workspace, name: str) -> dict:
    t = ws.store.testset(name)
    if t is None:
        raise ValueError(f"no test set named {name!r}; existing: {[x['name'] for x in ws.store.testsets()]}")
    items = ws.store.testset_items(t["id"])
    attributes: dict[str, int] = defaultdict(int)
    for i in items:
        attributes[i["attribute"] or "(none)"] += 1
    return {"name": t["name"], "kind": t["kind"], "source": t["source"], "pack": t["pack"], "items": len(items),
            "persons": len({i["person"] for i in items}), "with_target_photo": sum(1 for i in items if i["target_path"]),
            "attributes": dict(sorted(attributes.items())), "created_at": t["created_at"], "settings": t["settings"]}


def item_rows(ws: Workspace, name: str) -> list[dict]:
    """A test set's items as a table (what Browse-like views and `testset show` list)."""
    t = ws.store.testset(name)
    if t is None:
        raise ValueError(f"no test set named {name!r}")
    return [{"idx": i["idx"], "person": i["person"], "prompt": i["prompt"], "attribute": i["attribute"],
             "input": i["input_path"], "target": i["target_path"]} for i in ws.store.testset_items(t["id"])]
