"""Overhead of our model calls (InstantID, IP-Adapter-FaceID) over diffusers' stock calls on the same tiny parts.

Both run the same loaded pipeline (tiny SDXL + IdentityNet + IP-adapter, built locally from
configs and loaded through ``studio.models.load_instantid``), same prompt, size, steps and
seed, with the same face embedding as ``ip_adapter_image_embeds``:
* baseline: ``StableDiffusionXLControlNetPipeline.__call__`` as diffusers ships it (its
  IdentityNet sees the text embeddings);
* ours: ``InstantID.__call__`` (λ set, face tokens computed and routed to the IdentityNet).
The IP-Adapter-FaceID family the same way: baseline ``StableDiffusionXLPipeline.__call__`` with the
face as ``ip_adapter_image_embeds``; ours ``FaceID.__call__`` (loaded through ``load_faceid``).
Calls alternate; the median of each is compared. Measured in float32 and in bfloat16 (the
reduced precision a GPU runs, as the CPU can run it); our call also builds its scheduler and puts
its adapter in place each time.

Last line: ``ratio: <baseline median / our median>``, the lowest over families and precisions (goal
>= 0.95, i.e. at most 5% overhead).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    import numpy as np
    import torch
    from tiny_models import build_tiny_faceid, build_tiny_instantid

    from studio.dataset.draw import draw_kps
    from studio.models import FACEID, GenerationSettings, ModelSpec, load_faceid, load_instantid

    torch.set_num_threads(1)
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        root = build_tiny_instantid(Path(tmp))
        spec = ModelSpec("tiny", base=str(root / "base"), identitynet=str(root), ip_adapter=str(root / "ip-adapter.bin"))
        (root / "faceid").mkdir()
        faceid = ModelSpec("tiny-faceid", base=str(root / "base"), identitynet="", family=FACEID,
                           ip_adapter=str(build_tiny_faceid(root / "faceid", root / "base")))
        for family, dtype in [(f, d) for f in ("InstantID", FACEID) for d in (torch.float32, torch.bfloat16)]:
            model = (load_instantid(spec, "cpu", dtype=dtype) if family == "InstantID"
                     else load_faceid(faceid, "cpu", dtype=dtype))
            s = args.size
            kps = draw_kps(s, s, [[s * .35, s * .4], [s * .65, s * .4], [s * .5, s * .55], [s * .38, s * .7],
                                  [s * .62, s * .7]])
            emb = np.random.default_rng(0).normal(size=512).astype(np.float32)
            settings = GenerationSettings(prompt="a photo of a person smiling", negative_prompt="", steps=args.steps,
                                          width=s, height=s, guidance=5.0, ip_scale=0.8, identitynet_scale=0.8, seed=0)
            embeds = model.embeds(emb, cfg=True).to(dtype)
            pipe = model.pipe

            control = {"image": kps, "controlnet_conditioning_scale": 0.8} if family == "InstantID" else {}

            def stock():
                with torch.inference_mode():
                    pipe(prompt=settings.prompt, ip_adapter_image_embeds=[embeds], num_inference_steps=args.steps,
                         guidance_scale=5.0, width=s, height=s, generator=torch.Generator().manual_seed(0), **control)

            def ours():
                model(emb, kps, settings)

            ours(), stock()  # warm up (ours first: it sets λ on the shared pipeline)
            base_t, our_t = [], []
            for _ in range(args.runs):
                t = time.perf_counter(); stock(); base_t.append(time.perf_counter() - t)
                t = time.perf_counter(); ours(); our_t.append(time.perf_counter() - t)
            b, o = statistics.median(base_t), statistics.median(our_t)
            name = f"{family} {str(dtype).replace('torch.', '')}"
            stock_name = "SDXL-ControlNet" if family == "InstantID" else "SDXL + IP-adapter"
            print(f"{name}: tiny SDXL, {s}x{s}, {args.steps} steps, CFG, {args.runs} runs each")
            print(f"{name}: stock {stock_name} call: median {b * 1000:.1f} ms")
            print(f"{name}: {family} call (ours): median {o * 1000:.1f} ms  (ratio {b / o:.3f})")
            ratios.append(b / o)
    print(f"ratio: {min(ratios):.3f}")


if __name__ == "__main__":
    main()
