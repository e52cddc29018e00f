"""Generation stage, CLI and the Generate tab's API, with tiny InstantID weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, USERS, running_app
from PIL import Image

from studio.faces import FaceAnalyzer
from studio.generate import (NoFaceError, control_inputs, face_from_photo, face_from_workspace, generate,
                             register_model)
from studio.images import load_rgb
from studio.instantid import GenerationSettings, ModelCache

SMALL = dict(steps=2, width=64, height=64)


def test_largest_face_is_used_and_said(photos, pack):
    face = face_from_photo(load_rgb(photos["t1"]).rgb, FaceAnalyzer(pack), "upload")
    assert face.faces_found == 6 and "6 faces found; using the largest" in face.note
    with pytest.raises(NoFaceError, match="no face found"):
        face_from_photo(np.full((128, 128, 3), 200, np.uint8), FaceAnalyzer(pack), "blank")


def test_control_inputs_follow_the_face(curated_ws):
    row = next(r for r in curated_ws.store.image_table() if r["source"].endswith("/obama.jpg"))
    face = face_from_workspace(curated_ws, row["id"])
    kps_img, mask = control_inputs(face, 512, 512)
    arr = np.asarray(kps_img)
    ys, xs = np.nonzero(arr.sum(axis=2))
    # keypoints land inside the face box mapped into the output frame, and so does the mask
    scale = max(512 / face.size[0], 512 / face.size[1])
    dx, dy = (face.size[0] * scale - 512) / 2, (face.size[1] * scale - 512) / 2
    x1, y1, x2, y2 = (np.array(face.bbox) * scale - [dx, dy, dx, dy])
    assert x1 - 12 <= xs.min() and xs.max() <= x2 + 12 and y1 - 12 <= ys.min() and ys.max() <= y2 + 12
    assert tuple(arr[int(round(face.kps[2][1] * scale - dy)), int(round(face.kps[2][0] * scale - dx))]) == (0, 0, 255)
    assert mask[int((y1 + y2) / 2), int((x1 + x2) / 2)] == 1 and mask[0, 0] == 0


def test_sweep_two_models_saved_with_settings(curated_ws, tiny_spec):
    import dataclasses

    other = dataclasses.replace(tiny_spec, name="tiny-copy")
    row = next(r for r in curated_ws.store.image_table() if r["source"].endswith("/obama.jpg"))
    face = face_from_workspace(curated_ws, row["id"])
    samples = generate(curated_ws, ModelCache("cpu"), [tiny_spec, other], face,
                       GenerationSettings(prompt="a man laughing", seed=7, **SMALL), lambdas=[0.0, 0.5, 1.0], author="t")
    assert [(s.model, s.ip_scale) for s in samples] == [
        ("tiny", 0.0), ("tiny", 0.5), ("tiny", 1.0), ("tiny-copy", 0.0), ("tiny-copy", 0.5), ("tiny-copy", 1.0)]
    images = [np.asarray(Image.open(s.path)) for s in samples]
    assert all(im.shape == (64, 64, 3) for im in images)
    assert not np.array_equal(images[0], images[2])  # λ matters
    assert np.array_equal(images[1], images[4])  # same weights, same seed, same λ: same image
    rows = curated_ws.store.generations(batch=samples[0].path.parent.name)
    assert len(rows) == 6 and rows[1]["settings"]["ip_scale"] == 0.5 and rows[1]["settings"]["seed"] == 7
    assert rows[0]["reference"] == f"workspace:{row['id']}" and rows[0]["author"] == "t"
    assert rows[0]["model_spec"]["base"] == tiny_spec.base
    with pytest.raises(ValueError, match="at most two models"):
        generate(curated_ws, ModelCache("cpu"), [tiny_spec] * 3, face, GenerationSettings(prompt="x", **SMALL))


def test_cli_generate(curated_ws, tiny_spec, photos, tmp_path):
    env = {**os.environ, "STUDIO_FACE_PACK": "bundled", "OMP_NUM_THREADS": "1"}

    def studio(*args):
        return subprocess.run([sys.executable, "-m", "studio", *args, "--workspace", str(curated_ws.root)], cwd=REPO,
                              env=env, capture_output=True, text=True)

    reg = studio("register-model", "tiny", "--base", tiny_spec.base, "--identitynet", tiny_spec.identitynet,
                 "--ip-adapter", tiny_spec.ip_adapter, "--json")
    assert reg.returncode == 0, reg.stderr
    assert json.loads(reg.stdout)["missing"] == []
    out = studio("generate", "--model", "tiny", "--reference", str(photos["astronaut"]), "--prompt", "an astronaut smiling",
                 "--sweep", "0,1", "--steps", "2", "--width", "64", "--height", "64", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [r["lambda"] for r in result] == [0.0, 1.0] and all(os.path.exists(r["path"]) for r in result)
    bad = studio("generate", "--model", "InstantID", "--image-id", "1", "--prompt", "x")
    assert bad.returncode == 2 and "missing weights" in bad.stderr and "Traceback" not in bad.stderr
    nobody = studio("generate", "--model", "nope", "--image-id", "1", "--prompt", "x")
    assert nobody.returncode == 2 and "unknown model" in nobody.stderr


@pytest.fixture(scope="module")
def served_generate(tmp_path_factory, curation_source, pack, users_file, tiny_spec):
    from studio.analyze import analyze
    from studio.curate import curate
    from studio.ingest import ingest
    from studio.workspace import Workspace

    ws = Workspace.open(tmp_path_factory.mktemp("ws_generate"))
    ingest(ws, curation_source)
    blank = tmp_path_factory.mktemp("blank_src")
    (blank / "landscape").mkdir()
    from PIL import Image

    Image.new("RGB", (640, 640), (90, 140, 200)).save(blank / "landscape" / "sky.png")  # a photo without a face
    ingest(ws, blank)
    analyze(ws, pack=pack)
    curate(ws)
    register_model(ws, tiny_spec)
    with running_app(ws.root, "--auth", str(users_file), env={"OMP_NUM_THREADS": "1"}) as url:
        yield url, ws


def test_generate_tab_api(served_generate):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, ws = served_generate
    admin = Client(url, auth=("ada", USERS["ada"][1]), verbose=False)
    status = admin.predict(api_name="/models")
    assert status["tiny"] == [] and len(status["InstantID"]) == 3  # offline: production weights missing, said how
    obama = next(r["id"] for r in ws.store.image_table() if r["source"].endswith("/obama.jpg"))
    result = admin.predict(prompt="a man laughing", models=["tiny"], image_id=obama, sweep="0, 0.5, 1", steps=2,
                           width=64, height=64, api_name="/generate")
    assert [s["label"] for s in result["samples"]] == ["tiny · λ=0", "tiny · λ=0.5", "tiny · λ=1"]
    assert "bundled" in result["note"] and "antelopev2" in result["note"]
    assert all((ws.root / s["output"]).is_file() for s in result["samples"])
    with pytest.raises(AppError, match="missing weights"):
        admin.predict(prompt="x", models=["InstantID"], image_id=obama, steps=2, width=64, height=64, api_name="/generate")
    no_face = next(r["id"] for r in ws.store.image_table() if r["face_count"] == 0)
    with pytest.raises(AppError, match=f"image {no_face} has no analysed face"):
        admin.predict(prompt="x", models=["tiny"], image_id=no_face, api_name="/generate")
    with pytest.raises(AppError, match="image id must be between 1 and"):
        admin.predict(prompt="x", models=["tiny"], image_id=2**70, api_name="/generate")
    with pytest.raises(AppError, match="λ"):
        admin.predict(prompt="x", models=["tiny"], image_id=obama, ip_scale=3.0, api_name="/generate")
    annotator = Client(url, auth=("ann", USERS["ann"][1]), verbose=False)
    with pytest.raises(AppError, match="Access denied"):
        annotator.predict(prompt="x", models=["tiny"], image_id=obama, api_name="/generate")
