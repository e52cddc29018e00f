"""Generation: a reference face + a prompt -> images, for one or two models, at one λ or a sweep.

The reference face is the largest face of an uploaded photo (analysed with the workspace's face
pack) or a stored face of a workspace image. Its raw ArcFace embedding conditions the
IP-adapter; its 5 keypoints, mapped into the output frame, are drawn for the IdentityNet.
Every image is saved under ``generated/`` with all settings in the database.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .draw import draw_kps
from .instantid import DEFAULT_MODELS, GenerationSettings, ModelCache, ModelSpec
from .workspace import Workspace, atomic_write_bytes

DEFAULT_SWEEP = (0.0, 0.25, 0.5, 0.75, 1.0)


class NoFaceError(ValueError):
    """The reference photo has no detectable face."""


@dataclass
class FaceCondition:
    embedding: np.ndarray  # raw 512-d ArcFace embedding, as InstantID uses it
    kps: np.ndarray  # (5, 2) in the reference photo's pixels
    bbox: tuple[float, float, float, float]
    size: tuple[int, int]  # reference (width, height)
    faces_found: int
    reference: str
    pack: str
    chosen: str = "the largest face"

    @property
    def note(self) -> str:
        more = f"{self.faces_found} faces found; using {self.chosen}. " if self.faces_found > 1 else ""
        return more + f"Face embedding from the '{self.pack}' face pack."

    def describe(self) -> dict:
        return {"bbox": [round(v, 1) for v in self.bbox], "kps": np.round(self.kps, 1).tolist(),
                "faces_found": self.faces_found, "pack": self.pack, "reference_size": list(self.size)}


def face_from_photo(rgb: np.ndarray, analyzer, reference: str) -> FaceCondition:
    """The largest face of a photo; :class:`NoFaceError` when there is none."""
    faces = analyzer.analyze(rgb)
    if not faces:
        raise NoFaceError("no face found in the reference photo: use a photo where a face is clearly visible")
    f = faces[0]
    return FaceCondition(np.asarray(f["embedding"], np.float32), np.asarray(f["kps"], np.float64), tuple(f["bbox"]),
                         (rgb.shape[1], rgb.shape[0]), len(faces), reference, analyzer.pack.name)


def face_from_workspace(ws: Workspace, image_id: int) -> FaceCondition:
    """A workspace image's stored subject face (the one curation chose; no re-analysis)."""
    rows = ws.store.image_table(image_ids=[int(image_id)])
    if not rows:
        raise ValueError(f"no image with id {image_id}")
    subject = ws.store.subject_face(int(image_id))
    if subject is None or subject.embedding is None:
        raise NoFaceError(f"image {image_id} has no analysed face: run `python -m studio analyze` first")
    r = rows[0]
    face = FaceCondition(np.asarray(subject.embedding, np.float32), np.asarray(subject.kps, np.float64),
                         tuple(subject.bbox), (r["width"], r["height"]), r["face_count"] or 1, f"workspace:{image_id}",
                         (r["pack"] or "?").split(":")[0])
    face.chosen = (f"face #{subject.face_index}, the subject chosen by curation" if r["subject_face"] is not None
                   else "the largest face")
    return face


def control_inputs(face: FaceCondition, width: int, height: int, margin: float = 0.25):
    """Keypoint image and face-region mask in the output frame (reference scaled to cover it, centred)."""
    import torch

    w, h = face.size
    scale = max(width / w, height / h)
    dx, dy = (w * scale - width) / 2, (h * scale - height) / 2
    kps = face.kps * scale - np.array([dx, dy])
    x1, y1, x2, y2 = face.bbox
    bw, bh = (x2 - x1) * margin, (y2 - y1) * margin
    box = np.array([x1 - bw, y1 - bh, x2 + bw, y2 + bh]) * scale - np.array([dx, dy, dx, dy])
    mask = torch.zeros(height, width)
    xa, ya = max(0, int(box[0])), max(0, int(box[1]))
    xb, yb = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    mask[ya:yb, xa:xb] = 1.0
    return draw_kps(width, height, kps), mask


def registered_models(ws: Workspace) -> dict[str, ModelSpec]:
    """The paper's two models plus those registered in the workspace (e.g. our own training runs)."""
    models = dict(DEFAULT_MODELS)
    for m in ws.store.get_setting("generation_models", []):
        models[m["name"]] = ModelSpec(**m)
    return models


def register_model(ws: Workspace, spec: ModelSpec) -> None:
    models = [m for m in ws.store.get_setting("generation_models", []) if m["name"] != spec.name]
    ws.store.set_setting("generation_models", models + [spec.to_dict()])


@dataclass
class Sample:
    model: str
    ip_scale: float
    path: Path
    generation_id: int


def parse_sweep(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"λ sweep must be numbers separated by commas, got {text!r}") from None
    if not values or len(values) > 9:
        raise ValueError("λ sweep needs 1 to 9 values")
    return values


def generate(ws: Workspace, cache: ModelCache, models: list[ModelSpec], face: FaceCondition,
             settings: GenerationSettings, lambdas: list[float] | None = None, author: str = "studio",
             run_id: int | None = None) -> list[Sample]:
    """Every (model, λ) pair with the same seed; saves each image and its settings."""
    if not models:
        raise ValueError("choose at least one model")
    if len(models) > 2:
        raise ValueError("compare at most two models side by side")
    lambdas = list(lambdas) if lambdas else [settings.ip_scale]
    for lam in lambdas:
        dataclasses.replace(settings, ip_scale=lam).validate()
    kps_image, mask = control_inputs(face, settings.width, settings.height)
    batch = uuid.uuid4().hex[:12]
    out_dir = ws.root / "generated" / batch
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for spec in models:
        model = cache.get(spec)
        for lam in lambdas:
            s = dataclasses.replace(settings, ip_scale=lam)
            image = model(face.embedding, kps_image, s, mask=mask)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            path = out_dir / f"{_slug(spec.name)}_l{lam:.2f}_s{s.seed}.png"
            atomic_write_bytes(path, buf.getvalue())
            gid = ws.store.add_generation(batch=batch, model=spec.name, model_spec=spec.to_dict(),
                                          settings=dataclasses.asdict(s), reference=face.reference,
                                          face=face.describe(), output_path=str(path.relative_to(ws.root)),
                                          author=author, run_id=run_id)
            samples.append(Sample(spec.name, lam, path, gid))
    return samples


def save_reference(ws: Workspace, rgb: np.ndarray) -> str:
    """Keep an uploaded reference photo with the samples it produced; returns its workspace path."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    data = buf.getvalue()
    rel = Path("generated") / "references" / f"{hashlib.sha256(data).hexdigest()[:16]}.png"
    (ws.root / rel).parent.mkdir(parents=True, exist_ok=True)
    if not (ws.root / rel).exists():
        atomic_write_bytes(ws.root / rel, data)
    return rel.as_posix()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]


# -- what the Generate tab and `python -m studio generate` both do ---------------------------------

def resolve_models(ws: Workspace, names: list[str]) -> list[ModelSpec]:
    """Registered models by name, each with all of its weights on this machine (else ValueError saying what is missing)."""
    from .instantid import missing_weights

    registry = registered_models(ws)
    if not names:
        raise ValueError("choose at least one model")
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown model {unknown}; registered: {sorted(registry)}")
    specs = [registry[n] for n in names]
    for spec in specs:
        missing = missing_weights(spec)
        if missing:
            raise ValueError(f"model '{spec.name}' is missing weights: " + "; ".join(missing))
    return specs


def reference_face(ws: Workspace, face_pack: str, rgb: np.ndarray | None = None,
                   image_id: int | None = None) -> FaceCondition:
    """The conditioning face: from an uploaded photo (analysed with ``face_pack``) or a workspace image."""
    from .faces import FaceAnalyzer, MissingModelError, resolve_pack

    if (rgb is None) == (image_id is None):
        raise ValueError("give a reference photo or a workspace image id (one of them)")
    if rgb is not None:
        try:
            analyzer = FaceAnalyzer(resolve_pack(face_pack))
        except MissingModelError as exc:
            raise ValueError(str(exc)) from None
        return face_from_photo(rgb, analyzer, save_reference(ws, rgb))
    return face_from_workspace(ws, image_id)


def pack_note(face: FaceCondition) -> str:
    """Which face was used, and the warning when its pack is not the one the released weights know."""
    note = face.note
    if face.pack != "antelopev2":
        note += (" The released InstantID / CrossFaceID weights were trained on antelopev2 embeddings; with another "
                 "face pack their identity fidelity is not meaningful.")
    return note


def generate_run(ws: Workspace, cache: ModelCache, model_names: list[str], settings: GenerationSettings, *,
                 face_pack: str, rgb: np.ndarray | None = None, image_id: int | None = None,
                 sweep: str | None = None, author: str = "studio",
                 runner=None) -> tuple[str, list[Sample], int]:
    """Validate, find the face, generate as a recorded run; returns (note, samples, run id).

    ``runner(fn)`` runs the model calls (the app passes its ZeroGPU wrapper); default: call directly.
    """
    from .runs import execute

    settings.validate()
    specs = resolve_models(ws, model_names)
    lambdas = parse_sweep(sweep) if sweep else None
    face = reference_face(ws, face_pack, rgb=rgb, image_id=image_id)
    samples: list[Sample] = []

    def body(handle) -> dict:
        def work():
            return generate(ws, cache, specs, face, settings, lambdas, author=author, run_id=handle.run_id)
        samples.extend(runner(work) if runner else work())
        return {"samples": [str(s.path.relative_to(ws.root)) for s in samples], "models": model_names}

    run_id, _ = execute(ws, "generate", {**dataclasses.asdict(settings), "models": model_names, "sweep": lambdas},
                        author, body, inputs={"reference": face.reference, "face_pack": face.pack})
    return pack_note(face), samples, run_id
