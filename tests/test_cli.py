"""The CLI end to end in a subprocess, as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import studio_cli

REPO = Path(__file__).resolve().parent.parent


def studio(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = studio_cli(*args, env={"STUDIO_FACE_PACK": "bundled", "STUDIO_MODELS_DIR": "/nonexistent"})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_full_chain(tmp_path, curation_source):
    ws = str(tmp_path / "ws")
    ing = json.loads(studio("ingest", str(curation_source), "--workspace", ws, "--json").stdout)
    assert ing["added"] == 9 and ing["rejected"] == 0
    ana = json.loads(studio("analyze", "--workspace", ws, "--json", "--no-curate").stdout)
    assert ana["analyzed"] == 9 and ana["pack"].startswith("bundled:") and "curation" not in ana
    assert studio("problems", "--workspace", ws).stdout.strip() == "No ingest problems: every input was ingested."
    cur = json.loads(studio("curate", "--workspace", ws, "--json").stdout)
    assert cur["passed"] == 4 and cur["identity_outliers"] == 1
    stats = json.loads(studio("stats", "--workspace", ws, "--json").stdout)
    assert stats["table1"]["before_curation"]["images"] == 9
    assert stats["table1"]["after_curation"]["images"] == 4
    listing = json.loads(studio("list", "--workspace", ws, "--json").stdout)
    assert len(listing) == 9
    row = next(r for r in listing if r["source"].endswith("players.jpg"))
    assert row["status"] == "fail" and "too_many_faces" in row["reasons"] and row["face_count"] > 3
    assert {"person", "status", "reasons", "face_count", "face_ratio", "pose", "outlier"} <= set(row)
    # looser rules from the command line, no re-analysis needed
    cur2 = json.loads(studio("curate", "--workspace", ws, "--json", "--min-face-ratio", "0.02").stdout)
    assert cur2["passed"] == 5 and cur2["rules"]["min_face_ratio"] == 0.02
    text = studio("stats", "--workspace", ws).stdout
    assert "| Images | 9 | 5 |" in text
    # a re-analysis brings the verdicts up to date itself (no stale verdicts, same rules)
    redo = json.loads(studio("analyze", "--workspace", ws, "--json", "--redo").stdout)
    assert redo["analyzed"] == 9 and redo["curation"]["passed"] == 5
    after = studio("stats", "--workspace", ws, "--json")
    assert json.loads(after.stdout)["stale_verdicts"] == 0 and "stale" not in after.stderr
    refused = studio("export", "--workspace", ws, "--out", str(tmp_path / "exp"), check=False)
    assert refused.returncode == 2 and "not antelopev2" in refused.stderr and not (tmp_path / "exp").exists()
    done = studio("export", "--workspace", ws, "--out", str(tmp_path / "exp"), "--json", "--allow-other-pack")
    exp = json.loads(done.stdout)
    assert exp["exported"] == 5 and exp["without_caption"] == 5
    assert "warning: 5 exported image(s) have no approved caption" in done.stderr


def test_bad_arguments_are_clear(tmp_path):
    proc = studio("ingest", str(tmp_path / "missing"), "--workspace", str(tmp_path / "ws"), check=False)
    assert proc.returncode == 2 and "missing" in proc.stderr and "Traceback" not in proc.stderr
    proc = studio("curate", "--workspace", str(tmp_path / "ws"), "--max-faces", "0", check=False)
    assert proc.returncode == 2 and "max_faces" in proc.stderr
    proc = studio("models", "--face-pack", "antelopev2", check=False)
    assert proc.returncode == 2 and "glintr100.onnx" in proc.stderr


@pytest.mark.slow
def test_cli_generate(curated_ws, tiny_spec, photos, tmp_path):
    env = {"STUDIO_FACE_PACK": "bundled", "OMP_NUM_THREADS": "1"}

    def studio(*args):
        return studio_cli(*args, "--workspace", curated_ws.root, env=env)

    reg = studio("register-model", "tiny", "--base", tiny_spec.base, "--identitynet", tiny_spec.identitynet,
                 "--ip-adapter", tiny_spec.ip_adapter, "--json")
    assert reg.returncode == 0, reg.stderr
    assert json.loads(reg.stdout)["missing"] == [] and json.loads(reg.stdout)["registered"]["face_pack"] == "antelopev2"
    refused = studio("generate", "--model", "tiny", "--reference", str(photos["astronaut"]), "--prompt", "x",
                     "--steps", "2", "--width", "64", "--height", "64")
    assert refused.returncode == 2 and "trained on 'antelopev2' face embeddings" in refused.stderr
    reg = studio("register-model", "tiny", "--base", tiny_spec.base, "--identitynet", tiny_spec.identitynet,
                 "--ip-adapter", tiny_spec.ip_adapter, "--trained-face-pack", "bundled", "--json")
    assert reg.returncode == 0 and json.loads(reg.stdout)["registered"]["face_pack"] == "bundled"
    out = studio("generate", "--model", "tiny", "--reference", str(photos["astronaut"]), "--prompt", "an astronaut smiling",
                 "--sweep", "0,1", "--steps", "2", "--width", "64", "--height", "64", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [r["lambda"] for r in result] == [0.0, 1.0] and all(os.path.exists(r["path"]) for r in result)
    bad = studio("generate", "--model", "InstantID", "--image-id", "1", "--prompt", "x")
    assert bad.returncode == 2 and "missing weights" in bad.stderr and "Traceback" not in bad.stderr
    nobody = studio("generate", "--model", "nope", "--image-id", "1", "--prompt", "x")
    assert nobody.returncode == 2 and "unknown model" in nobody.stderr
    offline = studio_cli("models", "--download", "crossfaceid", env=env)
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    assert ("download of Super-shuhe/CrossFaceID-InstantID failed" in offline.stderr and
            "hf download Super-shuhe/CrossFaceID-InstantID --include 'ControlNetModel/*' 'controlnet/*' "
            "'ip-adapter.bin' 'pytorch_model.bin'" in offline.stderr)
    clip = studio_cli("models", "--download", "clip", env=env)  # through open_clip's own downloader
    assert clip.returncode == 2 and "Traceback" not in clip.stderr
    assert "download of CLIP ViT-L-14/openai failed" in clip.stderr
    assert "hf download timm/vit_large_patch14_clip_224.openai --local-dir models/clip" in clip.stderr


def test_models_says_what_this_machine_has(tmp_path):
    """Providers face analysis can use, each registered model ready or missing (with the command), and the
    evaluation's CLIP."""
    out = studio("models", "--workspace", str(tmp_path / "ws"), "--json")
    info = json.loads(out.stdout)
    assert "CPUExecutionProvider" in info["onnxruntime_providers"] and info["pack"] == "bundled"
    assert any("hf download InstantX/InstantID" in m for m in info["models"]["InstantID"])
    assert "models --download clip" in info["clip"]
    text = studio("models", "--workspace", str(tmp_path / "ws")).stdout
    assert "onnxruntime providers:" in text and "InstantID: missing" in text and "evaluation CLIP" in text
