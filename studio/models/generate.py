"""Generation: a reference face + a prompt -> images, for one or two models, at one λ or a sweep.

The reference face is a face of an uploaded photo (the largest unless another is chosen,
analysed with the workspace's face pack) or a stored face of a workspace image. Its raw ArcFace
embedding conditions the IP-adapter; the 5 keypoints of the same face, or of a face on an
optional pose photo, mapped into the output frame, are drawn for the IdentityNet. The output
frame is the official demo's (the photo at long side 1280, multiples of 64) unless a size is
given. Every image is saved under ``generated/`` with all settings in the database.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..dataset.draw import draw_kps
from . import DEFAULT_MODELS, GenerationSettings, ModelCache, ModelSpec, photo_framing
from ..workspace import Workspace, atomic_write_bytes

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


def face_from_photo(rgb: np.ndarray, analyzer, reference: str, index: int = 0) -> FaceCondition:
    """Face ``index`` of a photo, faces ordered largest first; :class:`NoFaceError` when there is none."""
    faces = analyzer.analyze(rgb)
    if not faces:
        raise NoFaceError("no face found in the reference photo: use a photo where a face is clearly visible")
    if not 0 <= index < len(faces):
        raise ValueError(f"face #{index} asked for, but the photo has {len(faces)} face(s): "
                         f"choose 0 to {len(faces) - 1} (0 is the largest)")
    f = faces[index]
    face = FaceCondition(np.asarray(f["embedding"], np.float32), np.asarray(f["kps"], np.float64), tuple(f["bbox"]),
                         (rgb.shape[1], rgb.shape[0]), len(faces), reference, analyzer.pack.name)
    if index:
        face.chosen = f"face #{index} (by size, 0 = largest)"
    return face


def face_from_workspace(ws: Workspace, image_id: int, index: int | None = None) -> FaceCondition:
    """A workspace image's stored face: the subject curation chose, or face ``index`` (no re-analysis)."""
    rows = ws.store.image_table(image_ids=[int(image_id)])
    if not rows:
        raise ValueError(f"no image with id {image_id}")
    r = rows[0]
    if index is None:
        chosen = ws.store.subject_face(int(image_id))
    else:
        faces = ws.store.faces(int(image_id))
        if faces and not 0 <= index < len(faces):
            raise ValueError(f"face #{index} asked for, but image {image_id} has {len(faces)} face(s): "
                             f"choose 0 to {len(faces) - 1} (0 is the largest)")
        chosen = faces[index] if faces else None
    if chosen is None or chosen.embedding is None:
        raise NoFaceError(f"image {image_id} has no analysed face: run `python -m studio analyze` first")
    face = FaceCondition(np.asarray(chosen.embedding, np.float32), np.asarray(chosen.kps, np.float64),
                         tuple(chosen.bbox), (r["width"], r["height"]), r["face_count"] or 1, f"workspace:{image_id}",
                         (r["pack"] or "?").split(":")[0])
    if index is not None:
        face.chosen = f"face #{index} (by size, 0 = largest)"
    else:
        face.chosen = (f"face #{chosen.face_index}, the subject chosen by curation" if r["subject_face"] is not None
                       else "the largest face")
    return face


class FramingError(ValueError):
    """The requested size would cut the face's keypoints out of the frame."""


def output_frame(size: tuple[int, int], width: int | None, height: int | None, long_side: int = 1280):
    """(W, H, sx, sy, dx, dy): the output size and the map photo px -> output px (x * s - d).

    No size given: the official framing, the whole photo resized to W x H (a slight stretch from
    rounding to multiples of 64, as the demo does). A size given: scaled to cover it, centred.
    """
    w, h = size
    if width is None:
        W, H = photo_framing(w, h, long_side)
        return W, H, W / w, H / h, 0.0, 0.0
    scale = max(width / w, height / h)
    return width, height, scale, scale, (w * scale - width) / 2, (h * scale - height) / 2


def control_inputs(face: FaceCondition, width: int | None = None, height: int | None = None, margin: float = 0.0,
                   long_side: int = 1280, strict: bool = True):
    """Keypoint image and face-region mask (the face box grown by ``margin`` per side) in the output frame.

    ``strict``: a size that crops any keypoint out of the frame is refused (:class:`FramingError`).
    """
    import torch

    W, H, sx, sy, dx, dy = output_frame(face.size, width, height, long_side)
    kps = face.kps * np.array([sx, sy]) - np.array([dx, dy])
    if strict and ((kps < 0).any() or (kps[:, 0] >= W).any() or (kps[:, 1] >= H).any()):
        raise FramingError(f"a {W}x{H} crop of this {face.size[0]}x{face.size[1]} photo cuts the face's keypoints out "
                           "of the frame: leave width/height empty (the photo's own framing) or choose a size closer "
                           "to the photo's aspect ratio")
    x1, y1, x2, y2 = face.bbox
    bw, bh = (x2 - x1) * margin, (y2 - y1) * margin
    box = np.array([x1 - bw, y1 - bh, x2 + bw, y2 + bh]) * np.array([sx, sy, sx, sy]) - np.array([dx, dy, dx, dy])
    mask = torch.zeros(H, W)
    xa, ya = max(0, int(box[0])), max(0, int(box[1]))
    xb, yb = min(W, int(np.ceil(box[2]))), min(H, int(np.ceil(box[3])))
    mask[ya:yb, xa:xb] = 1.0
    return draw_kps(W, H, kps), mask


def check_face_pack(spec: ModelSpec, pack: str, allow: bool = False) -> bool:
    """Refuse a face from a pack the model was not trained on, unless ``allow``; returns True on a mismatch."""
    if pack == spec.face_pack:
        return False
    if not allow:
        raise ValueError(
            f"model '{spec.name}' was trained on '{spec.face_pack}' face embeddings, but this face comes from the "
            f"'{pack}' face pack: its 512-d embedding lives in another space, so the images would look plausible "
            f"and be wrong. Use the '{spec.face_pack}' pack (for antelopev2: `python -m studio models --download "
            "antelopev2`, then --face-pack antelopev2 or STUDIO_FACE_PACK=antelopev2; re-analyze workspace images "
            "with it), or allow the mismatch explicitly (--allow-pack-mismatch, or the tab's 'face pack' checkbox; "
            "every sample records it)")
    return True


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


class GenerateResult(NamedTuple):
    note: str
    samples: list[Sample]
    run_id: int
    face: FaceCondition  # the reference face used (its photo and box: the page shows it beside the results)


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
             run_id: int | None = None, pose: FaceCondition | None = None,
             allow_pack_mismatch: bool = False) -> list[Sample]:
    """Every (model, λ) pair with the same seed; saves each image and its settings.

    ``pose``: a face whose keypoints (and photo framing) drive the pose; identity stays ``face``'s.
    """
    if not models:
        raise ValueError("choose at least one model")
    if len(models) > 2:
        raise ValueError("compare at most two models side by side")
    settings.validate()
    lambdas = list(lambdas) if lambdas else [settings.ip_scale]
    for lam in lambdas:
        dataclasses.replace(settings, ip_scale=lam).validate()
    mismatch = {spec.name: check_face_pack(spec, face.pack, allow_pack_mismatch) for spec in models}
    layout = pose or face
    framing = "photo" if settings.width is None else "explicit"
    kps_image, mask = control_inputs(layout, settings.width, settings.height, settings.face_margin, settings.long_side)
    width, height = kps_image.size
    described = face.describe() | ({"pose": pose.describe() | {"reference": pose.reference}} if pose else {})
    batch = uuid.uuid4().hex[:12]
    out_dir = ws.root / "generated" / batch
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for spec in models:
        model = cache.get(spec)
        for lam in lambdas:
            s = dataclasses.replace(settings, ip_scale=lam, width=width, height=height)
            image = model(face.embedding, kps_image, s, mask=mask)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            path = out_dir / f"{_slug(spec.name)}_l{lam:.2f}_s{s.seed}.png"
            atomic_write_bytes(path, buf.getvalue())
            recorded = dataclasses.asdict(s) | {"framing": framing, "generator": model.generator_device,
                                                 "dtype": str(model.pipe.unet.dtype).replace("torch.", "")}
            face_record = described | ({"pack_mismatch": {"model_expects": spec.face_pack, "used": face.pack}}
                                       if mismatch[spec.name] else {})
            gid = ws.store.add_generation(batch=batch, model=spec.name, model_spec=spec.to_dict(),
                                          settings=recorded, reference=face.reference,
                                          face=face_record, output_path=str(path.relative_to(ws.root)),
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
    from . import missing_weights

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
                   image_id: int | None = None, index: int | None = None, what: str = "reference") -> FaceCondition:
    """A face from an uploaded photo (analysed with ``face_pack``; ``index`` 0 = largest) or a workspace image."""
    from ..dataset.faces import FaceAnalyzer, MissingModelError, resolve_pack

    if (rgb is None) == (image_id is None):
        raise ValueError(f"give a {what} photo or a workspace image id (one of them)")
    if rgb is not None:
        try:
            analyzer = FaceAnalyzer(resolve_pack(face_pack))
        except MissingModelError as exc:
            raise ValueError(str(exc)) from None
        try:
            return face_from_photo(rgb, analyzer, save_reference(ws, rgb), index or 0)
        except NoFaceError:
            raise NoFaceError(f"no face found in the {what} photo: use a photo where a face is clearly visible") from None
    return face_from_workspace(ws, image_id, index)


def pack_note(face: FaceCondition, specs: list[ModelSpec] = ()) -> str:
    """Which face was used, and the warning when its pack is not the one a model was trained on."""
    note = face.note
    other = [s.name for s in specs if s.face_pack != face.pack]
    if other:
        note += (f" Face pack mismatch allowed: {', '.join(other)} expect(s) '{specs[0].face_pack}' embeddings; "
                 "identity fidelity is not meaningful, and each sample records the mismatch.")
    return note


def generate_run(ws: Workspace, cache: ModelCache, model_names: list[str], settings: GenerationSettings, *,
                 face_pack: str, rgb: np.ndarray | None = None, image_id: int | None = None,
                 face_index: int | None = None, pose_rgb: np.ndarray | None = None, pose_image_id: int | None = None,
                 sweep: str | None = None, allow_pack_mismatch: bool = False, author: str = "studio",
                 runner=None) -> GenerateResult:
    """Validate, find the face (and the pose face), generate as a recorded run; returns (note, samples, run id, face).

    ``runner(fn)`` runs the model calls (the app passes its ZeroGPU wrapper); default: call directly.
    """
    from . import missing_lcm_lora
    from ..runs.jobs import execute

    settings.validate()
    specs = resolve_models(ws, model_names)
    if settings.scheduler == "LCM":
        missing = [m for m in (missing_lcm_lora(s) for s in specs) if m]
        if missing:
            raise ValueError("; ".join(missing))
    lambdas = parse_sweep(sweep) if sweep else None
    face = reference_face(ws, face_pack, rgb=rgb, image_id=image_id, index=face_index)
    for spec in specs:
        check_face_pack(spec, face.pack, allow_pack_mismatch)
    pose = None
    if pose_rgb is not None or pose_image_id is not None:
        pose = reference_face(ws, face_pack, rgb=pose_rgb, image_id=pose_image_id, what="pose")
    samples: list[Sample] = []

    def body(handle) -> dict:
        def work():
            return generate(ws, cache, specs, face, settings, lambdas, author=author, run_id=handle.run_id, pose=pose,
                            allow_pack_mismatch=allow_pack_mismatch)
        samples.extend(runner(work) if runner else work())
        return {"samples": [str(s.path.relative_to(ws.root)) for s in samples], "models": model_names}

    inputs = {"reference": face.reference, "face_pack": face.pack, "pose": pose.reference if pose else None}
    run_id, _ = execute(ws, "generate", {**dataclasses.asdict(settings), "models": model_names, "sweep": lambdas,
                                         "allow_pack_mismatch": allow_pack_mismatch}, author, body, inputs=inputs)
    note = pack_note(face, specs)
    if pose:
        note += f" Pose from {pose.reference} ({pose.chosen})."
    if samples:
        w, h = Image.open(samples[0].path).size
        note += f" Output {w}x{h}" + (" (the photo's framing)." if settings.width is None else ".")
    return GenerateResult(note, samples, run_id, face)
