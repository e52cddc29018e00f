"""Metrics: CLIP-T / CLIP-I with open_clip (a tiny model saved locally, loaded like a real one), Face Sim on
real photos, missing faces counted, attribute scores, bootstrap intervals and paired deltas."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from studio.evaluation.evaluate import POSE_NOTE, bootstrap_ci, summarize, table_markdown, tradeoff
from studio.dataset.faces import FaceAnalyzer
from studio.images import load_rgb
from studio.evaluation.metrics import ClipSpec, MissingClipError, ScoreInput, Scorer, face_similarity, load_clip


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_clip(ClipSpec(model=str(tiny_clip_dir)), "cpu")


@pytest.fixture(scope="module")
def analyzer(pack):
    return FaceAnalyzer(pack)


def test_tiny_clip_loads_through_the_production_path(tiny_clip_dir, clip):
    """A folder and open_clip's own local-dir: schema are the same model; features are unit vectors."""
    other = load_clip(ClipSpec(model=f"local-dir:{tiny_clip_dir}"), "cpu")
    x = clip.preprocess(Image.new("RGB", (90, 120), (200, 120, 40)))
    a, b = clip.encode_images([x]), other.encode_images([x])
    assert a.shape == (1, 32) and np.allclose(a, b) and np.isclose(np.linalg.norm(a), 1.0, atol=1e-5)
    assert ClipSpec(model=str(tiny_clip_dir)).open_clip_args() == (f"local-dir:{tiny_clip_dir.resolve()}", None)


def test_missing_clip_weights_say_how_to_get_them(tmp_path, tiny_clip_dir):
    with pytest.raises(MissingClipError) as err:
        load_clip(ClipSpec("ViT-L-14", "openai"), "cpu")  # offline in tests: never downloaded here
    assert "ViT-L-14/openai" in str(err.value) and "hf download" in str(err.value)
    with pytest.raises(MissingClipError, match="no-such-model"):
        load_clip(ClipSpec("no-such-model", None), "cpu")
    # a built-in name without weights, and a folder with its config but not its weights: refused, never a
    # randomly initialised CLIP whose scores look real
    with pytest.raises(MissingClipError, match="ViT-B-32"):
        load_clip(ClipSpec("ViT-B-32", None), "cpu")
    (tmp_path / "open_clip_config.json").write_bytes((tiny_clip_dir / "open_clip_config.json").read_bytes())
    with pytest.raises(MissingClipError, match="could not be loaded"):
        load_clip(ClipSpec(str(tmp_path), None), "cpu")


def test_face_sim_same_person_high_other_person_low(photos, analyzer):
    obama, obama2, biden = (load_rgb(photos[k]).rgb for k in ("obama", "obama2", "biden"))
    same, other = face_similarity(analyzer, obama, obama2), face_similarity(analyzer, obama, biden)
    assert same > 0.45 and other < 0.25 and same - other > 0.3, (same, other)
    assert face_similarity(analyzer, obama, np.full((400, 400, 3), 128, np.uint8)) is None


def test_scorer_counts_a_faceless_image_as_missing_and_goes_on_past_a_bad_file(tmp_path, photos, clip, analyzer):
    sky = tmp_path / "sky.png"
    Image.new("RGB", (512, 512), (90, 140, 200)).save(sky)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    ref = analyzer.analyze(load_rgb(photos["obama"]).rgb)[0]["embedding"]
    inputs = [ScoreInput("same", photos["obama2"], "a photo of a man", photos["obama"], ref, "smiling"),
              ScoreInput("other", photos["biden"], "a photo of a man", photos["obama"], ref, "looking up"),
              ScoreInput("sky", sky, "a photo of a man", photos["obama"], ref, "smiling"),
              ScoreInput("broken", broken, "a photo of a man", photos["obama"], ref)]
    scorer = Scorer(clip, analyzer, batch_size=3)
    rows = {r["key"]: r for batch in scorer.score(inputs) for r in batch}
    assert rows["same"]["face_sim"] > rows["other"]["face_sim"] + 0.3
    assert rows["sky"]["faces"] == 0 and "face_sim" not in rows["sky"] and "attr_correct" not in rows["sky"]
    assert -1 <= rows["sky"]["clip_t"] <= 1 and -1 <= rows["sky"]["clip_i"] <= 1  # CLIP metrics need no face
    assert rows["broken"]["faces"] == 0 and "broken.png" in rows["broken"]["error"]
    assert 0 < rows["same"]["attr_score"] < 1 and isinstance(rows["same"]["attr_correct"], bool)
    assert rows["other"]["attr_correct"] == (rows["other"]["pose"] == "looking up")  # pose from keypoints
    again = {r["key"]: r for batch in Scorer(clip, analyzer, batch_size=1).score(inputs) for r in batch}
    for k in ("same", "other", "sky"):  # deterministic, and independent of batching
        assert again[k]["clip_t"] == pytest.approx(rows[k]["clip_t"], abs=1e-5)
        assert again[k].get("face_sim") == pytest.approx(rows[k].get("face_sim"), abs=1e-5)
    with pytest.raises(ValueError, match="no automatic score for attribute"):
        next(scorer.score([ScoreInput("x", sky, "p", None, None, "wings")]))


def test_clip_t_ranks_own_caption_above_a_shuffled_one_with_real_weights(photos, analyzer):
    try:
        real = load_clip(ClipSpec(), "cpu")
    except MissingClipError as exc:
        pytest.skip(f"ViT-L/14 weights are not on this machine: {exc}")
    captions = {"astronaut": "a woman astronaut in an orange space suit in front of a flag",
                "players": "a group of basketball players on a court", "obama": "a man in a suit in front of a flag",
                "yaoming": "a tall asian man smiling"}
    inputs = [ScoreInput(k, photos[k], c, None, None) for k, c in captions.items()]
    shuffled = [ScoreInput(k, photos[k], c, None, None) for k, c in zip(captions, np.roll(list(captions.values()), 1))]
    own = [r["clip_t"] for b in Scorer(real, analyzer).score(inputs) for r in b]
    wrong = [r["clip_t"] for b in Scorer(real, analyzer).score(shuffled) for r in b]
    assert np.mean(own) > np.mean(wrong)


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    """For 4 values the bootstrap distribution of the mean can be enumerated: 256 equally likely resamples."""
    values = [0.1, 0.2, 0.5, 0.9]
    exact = [np.mean(c) for c in itertools.product(values, repeat=4)]
    for level in (0.8, 0.95):
        lo, hi = bootstrap_ci(values, n_boot=200000, seed=1, level=level)
        a = (1 - level) / 2
        assert lo == pytest.approx(np.quantile(exact, a, method="inverted_cdf"), abs=1e-9)
        assert hi == pytest.approx(np.quantile(exact, 1 - a, method="inverted_cdf"), abs=1e-9)
    assert bootstrap_ci([0.4], 1000) == (0.4, 0.4) and bootstrap_ci([0.3, 0.3, 0.3], 500) == pytest.approx((0.3, 0.3))
    assert bootstrap_ci([1, 2, 3], 100, seed=7) == bootstrap_ci([1, 2, 3], 100, seed=7)  # seeded: reproducible


def _row(model, lam, item, clip_t, face_sim, faces=1, asked=None, correct=None):
    return {"testset": "t", "kind": "customization", "model": model, "ip_scale": lam, "item_id": item, "clip_t": clip_t,
            "clip_i": clip_t / 2, "face_sim": face_sim, "faces": faces, "asked": asked, "attr_correct": correct}


def test_table_means_missing_faces_and_paired_deltas_by_hand():
    rows = [_row("base", 0.8, 1, 0.20, 0.60, asked="smiling", correct=0),
            _row("base", 0.8, 2, 0.30, 0.50, asked="smiling", correct=1),
            _row("base", 0.8, 3, 0.25, None, faces=0, asked="smiling", correct=None),
            _row("ours", 0.8, 1, 0.26, 0.55, asked="smiling", correct=1),
            _row("ours", 0.8, 2, 0.32, None, faces=0, asked="smiling", correct=None),
            _row("ours", 0.8, 3, 0.31, 0.40, asked="smiling", correct=1)]
    table = {r["model"]: r for r in summarize(rows, "base", n_boot=2000)}
    base, ours = table["base"], table["ours"]
    assert base["clip_t"] == pytest.approx(0.25) and ours["clip_t"] == pytest.approx((0.26 + 0.32 + 0.31) / 3)
    assert base["face_sim"] == pytest.approx(0.55) and base["face_sim_n"] == 2 and base["missing_faces"] == 1
    assert ours["face_sim"] == pytest.approx(0.475) and ours["missing_faces"] == 1
    assert base["attr_acc"] == pytest.approx(1 / 3) and ours["attr_acc"] == pytest.approx(2 / 3)  # no face: not followed
    # paired on the same items: CLIP-T diffs 0.06, 0.02, 0.06; Face Sim only item 1 has a face in both: -0.05
    assert ours["d_clip_t"] == pytest.approx((0.06 + 0.02 + 0.06) / 3) and ours["d_clip_t_n"] == 3
    assert ours["d_face_sim"] == pytest.approx(-0.05) and ours["d_face_sim_n"] == 1
    assert ours["d_face_sim_lo"] == pytest.approx(-0.05) and ours["d_face_sim_hi"] == pytest.approx(-0.05)
    assert ours["d_attr_acc"] == pytest.approx((1 - 1 + 1) / 3)  # base follows on 2 only, ours on 1 and 3
    assert 0.02 - 1e-9 <= ours["d_clip_t_lo"] <= ours["d_clip_t"] <= ours["d_clip_t_hi"] <= 0.06 + 1e-9
    assert "d_clip_t" not in base
    curve = {p["model"]: p for p in tradeoff(list(table.values()))}
    assert curve["ours"]["attribute_accuracy"] == pytest.approx(2 / 3) and curve["ours"]["face_sim"] == pytest.approx(0.475)


def test_pose_attributes_are_reported_apart_and_left_out_of_the_curve_by_default():
    """The keypoints decide an InstantID sample's pose: pose-following is its own column, not part of the curve."""
    rows = [_row("m", 0.8, 1, 0.2, 0.6, asked="smiling", correct=1),
            _row("m", 0.8, 2, 0.2, 0.4, asked="smiling", correct=0),
            _row("m", 0.8, 3, 0.2, 0.5, asked="side profile", correct=0),
            _row("m", 0.8, 4, 0.2, 0.5, asked="looking up", correct=0),
            _row("m", 0.8, 5, 0.2, 0.5, asked="looking down", correct=1)]
    (row,) = summarize(rows, None, n_boot=0)
    assert (row["attr_acc"], row["attr_acc_n"]) == (0.5, 2)
    assert row["pose_acc"] == pytest.approx(1 / 3) and row["pose_acc_n"] == 3
    (point,) = tradeoff([row])
    assert point["attribute_accuracy"] == 0.5  # pose left out
    (with_pose,) = tradeoff([row], pose=True)
    assert with_pose["attribute_accuracy"] == pytest.approx(2 / 5)  # weighted by how many items asked
    md = table_markdown([row], None)
    assert "Pose acc." in md and POSE_NOTE in md
    # a set asking for pose only has no point on the default curve
    only_pose = summarize([r for r in rows if r["asked"] != "smiling"], None, n_boot=0)
    assert tradeoff(only_pose) == [] and len(tradeoff(only_pose, pose=True)) == 1
