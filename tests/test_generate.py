"""Generation stage and the Generate tab's API, with tiny InstantID weights (the CLI: test_cli.py)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import USERS, running_app
from PIL import Image

from studio.dataset.faces import FaceAnalyzer
from studio.models.generate import (FramingError, NoFaceError, control_inputs, face_from_photo, face_from_workspace,
                                    generate)
from studio.images import load_rgb
from studio.models import GenerationSettings, ModelCache, photo_framing

SMALL = dict(steps=2, width=64, height=64)


def test_largest_face_is_used_and_said(photos, pack):
    face = face_from_photo(load_rgb(photos["t1"]).rgb, FaceAnalyzer(pack), "upload")
    assert face.faces_found == 6 and "6 faces found; using the largest" in face.note
    with pytest.raises(NoFaceError, match="no face found"):
        face_from_photo(np.full((128, 128, 3), 200, np.uint8), FaceAnalyzer(pack), "blank")


def test_another_face_can_be_chosen(photos, pack):
    """Face # counts by size, 0 = largest; an index past the last face is refused with the range."""
    rgb = load_rgb(photos["t1"]).rgb
    faces = FaceAnalyzer(pack).analyze(rgb)
    third = face_from_photo(rgb, FaceAnalyzer(pack), "upload", index=2)
    assert third.bbox == tuple(faces[2]["bbox"]) and third.bbox != tuple(faces[0]["bbox"])
    assert np.allclose(third.embedding, faces[2]["embedding"]) and "using face #2" in third.note
    with pytest.raises(ValueError, match=r"face #6 asked for, but the photo has 6 face\(s\): choose 0 to 5"):
        face_from_photo(rgb, FaceAnalyzer(pack), "upload", index=6)


def test_photo_framing_never_crops_the_face_out(photos, pack, tmp_path):
    """A tall phone-like photo with the face near the top: the old square centre-crop cut the keypoints out.
    The default (the demo's framing) keeps the whole photo; an explicit square is refused, naming the fix."""
    face_img = Image.open(photos["obama"]).convert("RGB")
    tall = Image.new("RGB", (face_img.width, face_img.width * 3), (120, 120, 120))
    tall.paste(face_img, (0, 0))
    face = face_from_photo(np.asarray(tall), FaceAnalyzer(pack), "tall")
    with pytest.raises(FramingError, match="cuts the face's keypoints out of the frame: leave width/height empty"):
        control_inputs(face, 1024, 1024)
    kps_img, mask = control_inputs(face, long_side=1280)
    assert kps_img.size == photo_framing(*face.size) and kps_img.size[1] == 1280
    arr = np.asarray(kps_img)
    assert (arr.sum(axis=2) > 0).sum() > 200  # all five keypoints drawn inside the frame
    sx, sy = kps_img.size[0] / face.size[0], kps_img.size[1] / face.size[1]
    nose = face.kps[2] * [sx, sy]
    assert tuple(arr[int(nose[1]), int(nose[0])]) == (0, 0, 255)
    assert mask[int(nose[1]), int(nose[0])] == 1 and mask.shape == (1280, kps_img.size[0])


def test_face_pack_mismatch_is_refused_unless_allowed(curated_ws, tiny_spec):
    """The released weights expect antelopev2 embeddings; a bundled-pack face is refused, with how to get
    antelopev2; allowed explicitly, every saved sample records the mismatch."""
    import dataclasses

    released_like = dataclasses.replace(tiny_spec, name="expects-antelopev2", face_pack="antelopev2")
    row = next(r for r in curated_ws.store.image_table() if r["source"].endswith("/obama.jpg"))
    face = face_from_workspace(curated_ws, row["id"])
    assert face.pack == "bundled"
    settings = GenerationSettings(prompt="a man", **SMALL)
    with pytest.raises(ValueError, match="trained on 'antelopev2' face embeddings.*'bundled' face pack.*"
                                         "models --download antelopev2.*--allow-pack-mismatch"):
        generate(curated_ws, ModelCache("cpu"), [released_like], face, settings)
    samples = generate(curated_ws, ModelCache("cpu"), [released_like, tiny_spec], face, settings,
                       allow_pack_mismatch=True)
    rows = {r["model"]: r for r in curated_ws.store.generations(batch=samples[0].path.parent.name)}
    assert rows["expects-antelopev2"]["face"]["pack_mismatch"] == {"model_expects": "antelopev2", "used": "bundled"}
    assert "pack_mismatch" not in rows["tiny"]["face"]  # the model trained on this pack: nothing to record


def test_pose_reference_drives_the_keypoints_and_the_frame(curated_ws, tiny_spec):
    obama = next(r for r in curated_ws.store.image_table() if r["source"].endswith("/obama.jpg"))
    biden = next(r for r in curated_ws.store.image_table() if r["source"].endswith("/biden.jpg"))
    face, pose = face_from_workspace(curated_ws, obama["id"]), face_from_workspace(curated_ws, biden["id"])
    settings = GenerationSettings(prompt="a man", steps=2, long_side=128)
    cache = ModelCache("cpu")
    plain = generate(curated_ws, cache, [tiny_spec], face, settings)[0]
    posed = generate(curated_ws, cache, [tiny_spec], face, settings, pose=pose)[0]
    assert Image.open(posed.path).size == photo_framing(*pose.size, long_side=128)
    assert Image.open(plain.path).size == photo_framing(*face.size, long_side=128)
    row = curated_ws.store.generations(batch=posed.path.parent.name)[0]
    assert row["face"]["pose"]["reference"] == f"workspace:{biden['id']}" and row["settings"]["framing"] == "photo"
    assert row["face"]["bbox"] == face.describe()["bbox"]  # identity still from the reference
    same_frame = generate(curated_ws, cache, [tiny_spec], face, settings, pose=face)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(same_frame.path)), np.asarray(Image.open(plain.path)))


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


@pytest.mark.slow
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
    assert "from the 'bundled' face pack" in result["note"] and "mismatch" not in result["note"]
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


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def served_dtype(request, served_generate, users_file):
    """The same workspace served in float32 (the fixture's app) and in bfloat16 (STUDIO_DTYPE, as on a GPU)."""
    url, ws = served_generate
    if request.param == "float32":
        yield url, ws, "float32"
        return
    with running_app(ws.root, "--auth", str(users_file), env={"OMP_NUM_THREADS": "1", "STUDIO_DTYPE": "bfloat16"}) as url2:
        yield url2, ws, "bfloat16"


@pytest.mark.slow
def test_generate_api_parity_with_the_demo(served_dtype):
    """Pose reference, style template, fast mode (the tiny LCM-LoRA through diffusers' loader), face choice
    and the face-pack refusal, through gradio_client as a user's script would call them; in float32 and bfloat16."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, ws, dtype = served_dtype
    admin = Client(url, auth=("ada", USERS["ada"][1]), verbose=False)
    table = ws.store.image_table()
    obama = next(r["id"] for r in table if r["source"].endswith("/obama.jpg"))
    biden = next(r["id"] for r in table if r["source"].endswith("/biden.jpg"))
    crowd = next(r["id"] for r in table if r["source"].endswith("/players.jpg"))
    base = dict(prompt="a man laughing", models=["tiny"], steps=2, long_side=128, api_name="/generate")

    plain = admin.predict(image_id=obama, **base)["samples"][0]
    assert plain["settings"]["dtype"] == dtype
    assert plain["settings"]["width"] == 64 and plain["settings"]["height"] == 128  # the photo's framing
    styled = admin.predict(image_id=obama, style="Film Noir", **base)["samples"][0]
    assert styled["settings"]["style"] == "Film Noir"
    fast = admin.predict(image_id=obama, fast=True, **{**base, "steps": None})["samples"][0]
    assert (fast["settings"]["scheduler"], fast["settings"]["steps"], fast["settings"]["guidance"]) == ("LCM", 5, 1.5)
    posed = admin.predict(image_id=obama, pose_image_id=biden, **base)
    assert f"Pose from workspace:{biden}" in posed["note"] and posed["samples"][0]["face"]["pose"]
    second = admin.predict(image_id=crowd, face_index=1, **base)
    faces = ws.store.faces(crowd)
    assert second["samples"][0]["face"]["bbox"] == [round(v, 1) for v in faces[1].bbox] and "face #1" in second["note"]
    images = [np.asarray(Image.open(ws.root / r["output"])) for r in (plain, styled, fast)]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[0], images[2])
    with pytest.raises(AppError, match=f"face #{len(faces)} asked for"):
        admin.predict(image_id=crowd, face_index=len(faces), **base)
    with pytest.raises(AppError, match="unknown style"):
        admin.predict(image_id=obama, style="Oil on canvas", **base)
    with pytest.raises(AppError, match="trained on 'antelopev2' face embeddings"):
        admin.predict(image_id=obama, **{**base, "models": ["tiny-ante"]})
    allowed = admin.predict(image_id=obama, allow_pack_mismatch=True, **{**base, "models": ["tiny-ante"]})
    assert "mismatch allowed" in allowed["note"] and allowed["samples"][0]["face"]["pack_mismatch"]["used"] == "bundled"
