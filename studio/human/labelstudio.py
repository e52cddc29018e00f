"""A study to Label Studio and back: its labeling config, its tasks with every score, and its JSON export read in.

Label Studio's ``Rating`` tag starts at 1, the paper's scales at 0, so each criterion is a ``Choices``
tag with the values "0"-"5" under the criterion's name (``Customization``, ``Fidelity``, ``Quality``);
the comment is a ``TextArea`` named ``comment``. A task's data carries the study, the item position
(``item``), the sample it shows (``sample_id``), ``duplicate_of`` (the original's position, for a
self-consistency duplicate) and the prompt; the model stays out of the data, as annotators must not
see it.

Annotators: Label Studio names an annotation's author by a user of its own (an email on import, a
user id in its export). A studio annotator ``NAME`` is ``NAME@<domain>`` (``studio.local`` by
default) unless an emails file maps names to emails; the import reads the same mapping back, with
Label Studio's user list (``GET /api/users``) to turn ids into emails.

Images: ``data`` embeds each photo as a data URL (small studies, nothing to serve); ``local-files``
points at ``/data/local-files/?d=<path>`` under a document root (Label Studio started with
``LOCAL_FILES_SERVING_ENABLED=true`` and ``LOCAL_FILES_DOCUMENT_ROOT`` set to that root, and a
local-files storage added to the project for the folder).
"""
from __future__ import annotations

import base64
import json
import mimetypes
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

from ..codes import CRITERIA
from ..workspace import Workspace, atomic_write_bytes
from .studies import get_study, parse_score

IMAGE_MODES = ("data", "local-files")
DEFAULT_DOMAIN = "studio.local"


def tag_name(criterion: str) -> str:
    return criterion.capitalize()


def label_config() -> str:
    """The labeling config whose names the tasks' results use."""
    choices = "".join(f'<Choice value="{v}"/>' for v in range(6))
    scales = "\n".join(f'  <Header value="{tag_name(c)} (0-5)"/>\n  <Choices name="{tag_name(c)}" toName="image" '
                       f'choice="single" showInline="true" required="true">{choices}</Choices>' for c in CRITERIA)
    return f"""<View>
  <Header value="Input face"/>
  <Image name="face" value="$face" maxWidth="360px"/>
  <Header value="Generated image"/>
  <Image name="image" value="$image" maxWidth="512px"/>
  <Text name="prompt" value="$prompt"/>
{scales}
  <TextArea name="comment" toName="image" editable="true" maxSubmissions="1" placeholder="Comment (optional)"/>
</View>
"""


def read_emails(path: Path | None) -> dict[str, str]:
    """Studio annotator -> Label Studio email, from a JSON object or a two-column CSV (name,email)."""
    if path is None:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError(f"{path}: expected a JSON object of annotator name -> email")
        return data
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lower().startswith("name,"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or "@" not in parts[1]:
            raise ValueError(f"{path}:{n}: expected 'name,email', got {line!r}")
        out[parts[0]] = parts[1]
    return out


def email_of(name: str, emails: dict[str, str], domain: str = DEFAULT_DOMAIN) -> str:
    return emails.get(name) or f"{name}@{domain}"


def name_of(email: str, emails: dict[str, str], domain: str = DEFAULT_DOMAIN) -> str:
    back = {v.lower(): k for k, v in emails.items()}
    if email.lower() in back:
        return back[email.lower()]
    local, _, dom = email.partition("@")
    return local if dom.lower() == domain.lower() else email


def image_ref(ws: Workspace, rel: str, mode: str, document_root: Path | None) -> str:
    path = ws.root / rel
    if mode == "data":
        kind = mimetypes.guess_type(path.name)[0] or "image/png"
        return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()
    root = Path(document_root or ws.root).resolve()
    try:
        inside = path.resolve().relative_to(root)
    except ValueError:
        raise ValueError(f"{path} is not under the document root {root}") from None
    return "/data/local-files/?d=" + quote(inside.as_posix())


def export_labelstudio(ws: Workspace, name: str, out_dir: Path, *, images: str = "data",
                       document_root: Path | None = None, emails: dict[str, str] | None = None,
                       domain: str = DEFAULT_DOMAIN) -> dict:
    """Write ``label_config.xml``, ``tasks.json`` (every item, with the studio's scores and comments as
    annotations) and ``annotators.json`` (the name -> email mapping used); returns their paths and counts."""
    if images not in IMAGE_MODES:
        raise ValueError(f"images must be one of {IMAGE_MODES}, got {images!r}")
    emails = emails or {}
    s = get_study(ws, name)
    items = ws.store.study_items(s["id"])
    by_id = {it["id"]: it for it in items}
    tasks: dict[int, dict] = {}
    for it in items:
        original = by_id.get(it["duplicate_of"]) if it["duplicate_of"] else None
        tasks[it["id"]] = {"data": {
            "image": image_ref(ws, it["image_path"], images, document_root),
            "face": image_ref(ws, it["face_path"], images, document_root),
            "prompt": it["prompt"], "study": s["name"], "item": it["idx"],
            "sample_id": it["generation_id"] if it["generation_id"] is not None else Path(it["image_path"]).stem,
            "duplicate_of": original["idx"] if original else None}, "annotations": []}
    per: dict[tuple, dict] = {}
    used: dict[str, str] = {}

    def annotation(item_id: int, annotator: str, **fields) -> dict:
        """The annotator's one annotation of an item (scores and comment together), made on first use."""
        if (item_id, annotator) not in per:
            used[annotator] = email_of(annotator, emails, domain)
            per[(item_id, annotator)] = {"completed_by": {"email": used[annotator]}, "result": [], **fields}
            tasks[item_id]["annotations"].append(per[(item_id, annotator)])
        return per[(item_id, annotator)]

    for r in ws.store.study_scores(s["id"]):
        annotation(r["item_id"], r["annotator"], lead_time=r["seconds"], created_at=r["updated_at"])["result"].append(
            {"from_name": tag_name(r["criterion"]), "to_name": "image", "type": "choices",
             "value": {"choices": [str(r["score"])]}})
    for c in ws.store.study_comments(s["id"]):  # a comment without scores is still the annotator's annotation
        annotation(c["item_id"], c["annotator"])["result"].append(
            {"from_name": "comment", "to_name": "image", "type": "textarea", "value": {"text": [c["comment"]]}})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "label_config.xml", label_config().encode())
    atomic_write_bytes(out / "tasks.json", json.dumps(list(tasks.values()), ensure_ascii=False, indent=1).encode())
    atomic_write_bytes(out / "annotators.json", json.dumps(used, indent=1).encode())
    return {"label_config": str(out / "label_config.xml"), "tasks": str(out / "tasks.json"),
            "annotators": str(out / "annotators.json"), "items": len(tasks), "annotations": len(per),
            "images": images, "users_needed": sorted(used.values())}


def import_labelstudio(ws: Workspace, name: str, export: Path, *, users: Path | None = None,
                       emails: dict[str, str] | None = None, domain: str = DEFAULT_DOMAIN,
                       replace: bool = False, from_study: str | None = None) -> dict:
    """Read a Label Studio JSON export of this study's tasks into the study: scores, annotators, comments.

    ``users``: Label Studio's user list (``GET /api/users``), to turn the export's user ids into emails.
    A score the studio already holds with another value is kept (counted) unless ``replace``. Each task
    is matched by its ``study`` (``from_study``: tasks exported from another study with the same items,
    e.g. a copy scored in Label Studio only) and ``item``; a task of another study, an unknown item or a
    value that is not 0-5 is that task's problem, named in ``problems``."""
    emails = emails or {}
    s = get_study(ws, name)
    expected = from_study or s["name"]
    try:
        tasks = json.loads(Path(export).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{export}: not a Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list):
        raise ValueError(f"{export}: expected a JSON list of tasks (Label Studio's JSON export)")
    ids = {}
    if users is not None:
        listed = json.loads(Path(users).read_text(encoding="utf-8"))
        listed = listed.get("results", listed) if isinstance(listed, dict) else listed
        ids = {int(u["id"]): u["email"] for u in listed if isinstance(u, dict) and "id" in u and "email" in u}
    items = {it["idx"]: it for it in ws.store.study_items(s["id"])}
    scores: dict[tuple[str, int], dict] = defaultdict(dict)
    comments: dict[tuple[str, int], str] = {}
    problems: list[str] = []
    for n, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        where = f"task {task.get('id', n) if isinstance(task, dict) else n}"
        if not isinstance(data, dict) or data.get("study") != expected or data.get("item") not in items:
            problems.append(f"{where}: not an item of study {expected!r} (data.study / data.item)")
            continue
        item = items[data["item"]]
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            who = ann.get("completed_by")
            email = who.get("email") if isinstance(who, dict) else ids.get(who) if isinstance(who, int) else None
            if not email:
                problems.append(f"{where}: annotator {who!r} unknown (give Label Studio's user list: --users)")
                continue
            annotator = name_of(email, emails, domain)
            for res in ann.get("result") or []:
                tag, value = res.get("from_name"), res.get("value") or {}
                if tag == "comment" and value.get("text"):
                    comments[(annotator, item["id"])] = "\n".join(map(str, value["text"]))
                elif isinstance(tag, str) and tag.lower() in CRITERIA:
                    try:
                        scores[(annotator, item["id"])][tag.lower()] = parse_score((value.get("choices") or [None])[0],
                                                                                   tag.lower())
                    except ValueError as exc:
                        problems.append(f"{where}: {exc}")
    counts = ws.store.import_study_scores(s["id"], scores, comments, replace=replace)
    return {"study": s["name"], "annotators": sorted({a for a, _ in scores} | {a for a, _ in comments}),
            **counts, "problems": problems}
