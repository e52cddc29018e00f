"""Evaluation scoring on a local Ray instance (2 CPUs): the same CLIP-T, CLIP-I, Face Sim and
attribute scores as the single-process scorer, stored under the same scorer, and a bad sample file
is that sample's problem only."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import REPO, studio_cli
from studio.evaluation.evaluate import EvalConfig, score_input
from studio.dataset.faces import FaceAnalyzer
from studio.images import load_rgb
from studio.evaluation.metrics import ClipSpec, ScoreInput, Scorer, load_clip
from studio.evaluation.score_ray import score_on_ray
from studio.evaluation.testsets import build_testset

pytest.importorskip("ray")
pytestmark = pytest.mark.ray


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys(), (a, b)
    for k in a:
        if isinstance(a[k], float):
            assert b[k] == pytest.approx(a[k], abs=1e-4), k
        else:
            assert a[k] == b[k], k


def test_ray_scores_equal_the_local_scorer_and_a_bad_file_stays_its_own(tmp_path, photos, pack, tiny_clip_dir):
    sky, broken = tmp_path / "sky.png", tmp_path / "broken.png"
    Image.new("RGB", (256, 256), (90, 140, 200)).save(sky)
    broken.write_bytes(b"not a png")
    analyzer = FaceAnalyzer(pack)
    ref = analyzer.analyze(load_rgb(photos["obama"]).rgb)[0]["embedding"]
    inputs = [ScoreInput("same", photos["obama2"], "a photo of a man", photos["obama"], ref, "smiling"),
              ScoreInput("other", photos["biden"], "a photo of a man", photos["obama"], ref, "looking up"),
              ScoreInput("sky", sky, "a blue sky", photos["obama"], ref, "smiling"),
              ScoreInput("broken", broken, "a photo of a man", photos["obama"], ref),
              ScoreInput("no-ref", photos["obama2"], "a photo of a man", None, None)]
    spec = ClipSpec(str(tiny_clip_dir), None)
    local = {r["key"]: r for b in Scorer(load_clip(spec, "cpu"), analyzer).score(inputs) for r in b}
    seen = []
    on_ray = {r["key"]: r for b in score_on_ray(inputs, spec, pack, device="cpu", workers=2, batch_size=2,
                                                progress=lambda items, **kw: (seen.append(kw["total"]), items)[1])
              for r in b}
    assert on_ray.keys() == local.keys() and seen == [5]
    for key in ("same", "other", "sky", "no-ref"):
        _same(local[key], on_ray[key])
    assert on_ray["same"]["face_sim"] > on_ray["other"]["face_sim"] + 0.3
    assert on_ray["sky"]["faces"] == 0 and "face_sim" not in on_ray["sky"]
    assert "broken.png" in on_ray["broken"]["error"] and "clip_i" not in on_ray["no-ref"]
    with pytest.raises(ValueError, match="no automatic score for attribute"):
        next(score_on_ray([ScoreInput("x", sky, "p", None, None, "wings")], spec, pack, device="cpu"))


def test_evaluate_cli_scores_on_ray_and_a_local_rerun_reuses_every_score(eval_ws, tiny_clip_dir, pack):
    ws = eval_ws
    build_testset(ws, "custom", "customization", persons=["obama"], ask=["smiling"], per_person=2)
    cfg = EvalConfig(testsets=["custom"], models=["tiny"], lambdas=[0.8], clip_model=str(tiny_clip_dir),
                     clip_pretrained=None, n_boot=50, device="cpu", steps=2, width=64, height=64, guidance=3.0)
    env = {"PYTHONPATH": str(REPO)}
    out = studio_cli("evaluate", *cfg.to_cli(), "--engine", "ray", "--workers", "2", "--json", "--workspace", ws.root,
                     env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert (res["samples"], res["generated"], res["scored"]) == (2, 2, 2) and not res["score_errors"]
    rows = ws.store.eval_run_rows(res["run_id"], res["scorer"])
    assert len(rows) == 2 and all(r["clip_t"] is not None and r["scorer"] == res["scorer"] for r in rows)
    # the same samples scored here, in this process, give the same numbers
    samples = ws.store.eval_samples([r["key"] for r in rows])
    items = {i["id"]: i for i in ws.store.testset_items(ws.store.testset("custom")["id"])}
    inputs = [score_input(ws, samples[r["key"]], items[samples[r["key"]]["item_id"]]) for r in rows]
    scorer = Scorer(load_clip(ClipSpec(str(tiny_clip_dir), None), "cpu"), FaceAnalyzer(pack))
    assert scorer.name == res["scorer"]
    here = {r["key"]: r for b in scorer.score(inputs) for r in b}
    for r in rows:
        assert r["clip_t"] == pytest.approx(here[r["key"]]["clip_t"], abs=1e-4)
        assert r["clip_i"] == pytest.approx(here[r["key"]]["clip_i"], abs=1e-4)
        assert r.get("face_sim") == pytest.approx(here[r["key"]].get("face_sim"), abs=1e-4)
    # a local rerun reuses every score the Ray run stored
    again = studio_cli("evaluate", *cfg.to_cli(), "--json", "--workspace", ws.root, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (json.loads(again.stdout)["scored"], json.loads(again.stdout)["scores_reused"]) == (0, 2)
    # with every sample generated and scored nothing loads CLIP: the tables are rebuilt with its weights away
    weights = next(p for p in tiny_clip_dir.iterdir() if p.name != "open_clip_config.json")
    away = weights.with_name(weights.name + "-away")
    weights.rename(away)
    try:
        third = studio_cli("evaluate", *cfg.to_cli(), "--engine", "ray", "--json", "--workspace", ws.root, env=env)
    finally:
        away.rename(weights)
    assert third.returncode == 0, third.stderr[-3000:]
    assert (json.loads(third.stdout)["scored"], json.loads(third.stdout)["scorer"]) == (0, res["scorer"])
