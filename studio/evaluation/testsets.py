"""Evaluation test sets (paper §5.1): who is generated, from which face, with which prompt.

* customization (as CrossFaceID-test): an input face of a person + a prompt asking for an
  attribute + (when the workspace has one) a real photo of the same person showing it. Items come
  from photos whose caption tags or keypoint pose show a scored attribute, with another photo of the
  person as the input face; ``ask`` adds items that ask for an attribute of every input face.
* fidelity (as Unsplash-50): a face + a neutral prompt.

Built from the persons of a split (the test split by default) or named persons, or imported from a
CSV / JSONL file, a folder of text-image pairs, or a zip of either (what the Evaluate tab uploads).
Each item keeps its input face's analysis (box, keypoints, embedding, pack), so evaluation never
re-detects it and Face Sim compares embeddings of one pack.

A folder of text-image pairs (the shapes of CrossFaceID-test and Unsplash-50)::

    my-set/
      0001.jpg          a photo ...
      0001.txt          ... and its prompt (UTF-8 text)
      0001.input.jpg    optional: another photo of the same person, the input face
      anna/0002.jpg     a subfolder names the person (optional)
      anna/0002.txt

With an ``.input`` photo the pair's photo is the target (CLIP-I compares with it) and the input
photo gives the face, as in CrossFaceID-test; without one the face comes from the photo itself,
as in Unsplash-50.
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
#: which part of Table 2 a test set of each kind fills (the paper's measures for it)
FILLS = {"customization": "Table 2, as CrossFaceID-test: CLIP-T, CLIP-I",
         "fidelity": "Table 2, as Unsplash-50: Face Sim, CLIP-T, CLIP-I"}
INPUT_TAG = ".input"  # <stem>.input.<ext>: the input face of the pair <stem>
#: a zip upload's limits: what a test set can reasonably hold, far below what would fill a disk
ZIP_MAX_FILES = 20000
ZIP_MAX_BYTES = 4 << 30
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


def _photos(root: Path) -> list[Path]:
    """Every photo under ``root``, sorted; hidden files and a zip's ``__MACOSX`` copies left out."""
    from ..images import IMAGE_SUFFIXES

    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(root).parts))


def read_folder(root: Path) -> list[tuple[str, dict]]:
    """(where, row) of a folder of text-image pairs (layout in the module docstring), paths relative to ``root``.

    A photo without its ``.txt`` prompt is named; ``.input`` photos are matched to their pair."""
    root = Path(root)
    photos = _photos(root)
    inputs = {p.with_suffix("").with_suffix(""): p for p in photos if p.with_suffix("").suffix == INPUT_TAG}
    rows = []
    for photo in photos:
        if photo.with_suffix("").suffix == INPUT_TAG:
            if photo.with_suffix("").with_suffix("") not in {q.with_suffix("") for q in photos}:
                rows.append((photo.relative_to(root).as_posix(), {"error": "an input photo without its pair's photo"}))
            continue
        rel = photo.relative_to(root)
        text = photo.with_suffix(".txt")
        if not text.is_file():
            rows.append((rel.as_posix(), {"error": f"no prompt: {rel.with_suffix('.txt').as_posix()} is missing"}))
            continue
        try:
            prompt = text.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            prompt = ""  # reported as a missing prompt, with the file named
        face = inputs.get(photo.with_suffix(""))
        row = {"prompt": prompt, "person": rel.parent.as_posix() if rel.parent.parts else None}
        if face is not None:
            row.update(input=face.relative_to(root).as_posix(), target=rel.as_posix())
        else:
            row["input"] = rel.as_posix()
        rows.append((rel.as_posix(), row))
    if not rows:
        raise ValueError(f"{root.name}: no photos with a .txt prompt beside them (see the folder layout in the docs)")
    return rows


def read_photos(root: Path) -> list[tuple[str, dict]]:
    """(where, row) of every photo under ``root`` as an input face (a subfolder names the person), for designs
    that pair each face with prompts of their own."""
    root = Path(root)
    photos = _photos(root)
    if not photos:
        raise ValueError(f"{root.name}: no photos")
    rels = [p.relative_to(root) for p in photos]
    return [(r.as_posix(), {"input": r.as_posix(), "prompt": NEUTRAL_PROMPT,
                            "person": r.parent.as_posix() if r.parent.parts else None}) for r in rels]


def extract_zip(path: Path, dest: Path) -> Path:
    """Unpack an uploaded test set safely (no absolute or ``..`` names, links, or oversized contents) into ``dest``;
    returns the folder holding it (the single top folder when the zip has one)."""
    import shutil
    import stat
    import zipfile

    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{Path(path).name} is not a zip file") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > ZIP_MAX_FILES or sum(m.file_size for m in members) > ZIP_MAX_BYTES:
            raise ValueError(f"{Path(path).name} holds more than {ZIP_MAX_FILES} files or {ZIP_MAX_BYTES >> 30} GB")
        dest.mkdir(parents=True, exist_ok=True)
        for m in members:
            parts = Path(m.filename.replace("\\", "/")).parts
            if not parts or Path(m.filename).is_absolute() or ".." in parts or "\0" in m.filename or \
                    stat.S_ISLNK(m.external_attr >> 16):
                raise ValueError(f"{Path(path).name}: refused member {m.filename!r} (absolute, '..' or a link)")
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    top = [p for p in dest.iterdir() if p.name != "__MACOSX"]
    return top[0] if len(top) == 1 and top[0].is_dir() else dest


def keep_upload(ws: Workspace, upload: Path) -> Path:
    """An uploaded zip copied into the workspace (``imports/``, never served), where the import run reads it:
    a browser's upload cache is emptied hourly and the run may wait behind others."""
    import shutil
    import zipfile

    upload = Path(upload)
    if not zipfile.is_zipfile(upload):
        raise ValueError(f"{upload.name} is not a zip file")
    digest = hashlib.sha256()
    with open(upload, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    dest = ws.root / "imports" / f"{digest.hexdigest()[:24]}.zip"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        part = dest.with_suffix(".part")
        shutil.copyfile(upload, part)
        part.replace(dest)
    return dest


def _table_in(folder: Path) -> Path | None:
    tables = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".jsonl"))
    if len(tables) > 1:
        raise ValueError(f"{folder.name} holds several item files {[p.name for p in tables]}: keep one")
    return tables[0] if tables else None


def source_rows(path: Path, scratch: Path) -> tuple[list[tuple[str, dict]], Path]:
    """(where, row) of any import source and the folder its relative paths start from: a CSV / JSONL file,
    a folder of text-image pairs (or holding one CSV / JSONL), or a zip of such a folder (unpacked in ``scratch``)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        path = extract_zip(path, scratch)
    if path.is_dir():
        table = _table_in(path)
        if table is None:
            return read_folder(path), path
        path = table
    return [(f"{path.name} line {n}", row) for n, row in read_rows(path)], path.parent


def import_testset(ws: Workspace, path: Path, name: str, kind: str = "", *, face_pack: str = "auto",
                   replace: bool = False, run_id: int | None = None, track=None) -> dict:
    """Items from a CSV / JSONL file, a folder of text-image pairs or a zip of either (see :func:`source_rows`).

    A file's rows have ``input`` (a photo path, relative to the file, or ``image:<id>``), ``prompt``,
    optional ``attribute`` (else read from the prompt), ``target`` and ``person``. Photos are copied
    into the workspace and analysed with ``face_pack``; a row that cannot be used (no face,
    unreadable photo, missing field) is reported by line or file and left out. Without ``kind`` a
    set whose items have target photos is a customization set (CrossFaceID-test's shape), else a
    fidelity set (Unsplash-50's). The paths of an uploaded zip's file stay inside the zip.
    """
    import shutil
    import tempfile

    if kind and kind not in KINDS:
        raise ValueError(f"test set kind must be one of {KINDS}, got {kind!r}")
    name = _check_name(name)
    (ws.root / "tmp").mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="testset-", dir=ws.root / "tmp"))
    try:
        rows, base = source_rows(Path(path), scratch)
        confine = scratch if Path(path).suffix.lower() == ".zip" else None
        return _import_rows(ws, rows, base, Path(path), name, kind, face_pack, replace, run_id, track, confine)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _import_rows(ws: Workspace, rows: list[tuple[str, dict]], base: Path, path: Path, name: str, kind: str,
                 face_pack: str, replace: bool, run_id: int | None, track, confine: Path | None) -> dict:
    if not kind:  # pairs with another photo as the input face are CrossFaceID-test's shape; the others Unsplash-50's
        kind = "customization" if any(str(r.get("target") or "").strip() for _, r in rows) else "fidelity"
    items, problems, pack = read_items(ws, rows, base, name, kind, face_pack, track, confine)
    if not items:
        raise ValueError("no usable rows: " + "; ".join(problems[:5]))
    settings = {"file": str(path), "face_pack": pack, "rows": len(rows), "left_out": problems}
    tid = ws.store.save_testset(name=name, kind=kind, source=f"import:{path.name}", settings=settings, pack=pack,
                                items=items, run_id=run_id, replace=replace)
    return summary(ws, name) | {"id": tid, "left_out": problems}


def read_items(ws: Workspace, rows: list[tuple[str, dict]], base: Path, name: str, kind: str, face_pack: str,
               track=None, confine: Path | None = None) -> tuple[list[dict], list[str], str]:
    """Test items from (where, row) rows, each row's photos copied into the workspace and its input face analysed;
    returns (items, the rows left out with why, the face pack's name)."""
    from ..dataset.faces import FaceAnalyzer, resolve_pack
    from ..images import ImageError, load_rgb, read_bytes

    pack = resolve_pack(face_pack)
    analyzer = FaceAnalyzer(pack)
    compiled = compile_vocabulary({k: v for k, v in workspace_vocabulary(ws).items() if k in SCORED_ATTRIBUTES})
    dest = ws.root / "testsets" / hashlib.sha256(name.encode()).hexdigest()[:12]
    items, problems = [], []
    kept: dict[int, dict] | None = None
    for where, row in (track(rows, desc="test items") if track else rows):
        try:
            if "error" in row:  # found while reading the folder
                raise ValueError(row["error"])
            prompt = str(row.get("prompt") or "").strip()
            if not prompt or "\0" in prompt:
                raise ValueError("prompt is missing or not text")
            attribute = str(row.get("attribute") or "").strip() or None
            if attribute is None and kind != "fidelity":
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
                src = _resolve(base, source, confine)
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
                tsrc = _resolve(base, target, confine)
                tdata = read_bytes(tsrc)
                load_rgb(tsrc)  # readable
                item.update(target_path=_copy_in(ws, dest, tdata, tsrc.suffix), target_image_id=None)
            items.append(item)
        except (ValueError, ImageError, OSError) as exc:
            problems.append(f"{where}: {exc}")
    return items, problems, pack.name


def _resolve(base: Path, name: str, confine: Path | None) -> Path:
    path = base / name if not Path(name).is_absolute() else Path(name)
    if confine is not None and not path.resolve().is_relative_to(confine.resolve()):
        raise ValueError(f"{name} is outside the uploaded zip")
    return path


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
    return {"name": t["name"], "kind": t["kind"], "fills": FILLS.get(t["kind"], ""), "source": t["source"], "pack": t["pack"], "items": len(items),
            "persons": len({i["person"] for i in items}), "with_target_photo": sum(1 for i in items if i["target_path"]),
            "attributes": dict(sorted(attributes.items())), "created_at": t["created_at"], "settings": t["settings"]}


def item_rows(ws: Workspace, name: str) -> list[dict]:
    """A test set's items as a table (what Browse-like views and `testset show` list)."""
    t = ws.store.testset(name)
    if t is None:
        raise ValueError(f"no test set named {name!r}")
    return [{"idx": i["idx"], "person": i["person"], "prompt": i["prompt"], "attribute": i["attribute"],
             "input": i["input_path"], "target": i["target_path"]} for i in ws.store.testset_items(t["id"])]
