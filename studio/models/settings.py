"""Per-request settings of a generation, common to every family: λ, the IdentityNet strength, steps,
guidance, seed, framing, styles and schedulers (the official demo's choices)."""
from __future__ import annotations

from dataclasses import dataclass

#: The official demo's default negative prompt (its weighting syntax is passed on as plain text, as there).
DEMO_NEGATIVE_PROMPT = ("(lowres, low quality, worst quality:1.2), (text:1.2), watermark, (frame:1.2), deformed, ugly, "
                        "deformed eyes, blur, out of focus, blurry, deformed cat, deformed, photo, anthropomorphic cat, "
                        "monochrome, pet collar, gun, weapon, blue, 3d, drones, drone, buildings in background, green")

#: Named styles (the official demo's names; our wording): prompt template with ``{prompt}``, negative prompt.
STYLES: dict[str, tuple[str, str]] = {
    "(No style)": ("{prompt}", ""),
    "Watercolor": ("watercolor painting of {prompt}, soft washes of colour, paper texture, loose brush strokes",
                   "photograph, photorealistic, 3d render, hard edges"),
    "Film Noir": ("film noir still of {prompt}, black and white, hard shadows, dramatic low-key lighting, 1940s",
                  "colour, bright, cheerful, cartoon"),
    "Neon": ("{prompt} lit by neon signs at night, magenta and cyan glow, wet street reflections",
             "daylight, dull colours, flat lighting"),
    "Jungle": ("{prompt} in a dense tropical jungle, lush leaves, humid air, sunbeams through the canopy",
               "city, buildings, desert, snow"),
    "Mars": ("{prompt} on the surface of Mars, red dust, rocky plains, thin pale sky, science fiction",
             "green grass, trees, ocean, earth landscape"),
    "Vibrant Color": ("{prompt}, vivid saturated colours, bold complementary palette, bright studio light",
                      "black and white, muted, desaturated, dark"),
    "Snow": ("{prompt} in falling snow, winter clothing, frosty air, soft overcast light",
             "summer, beach, heat, green foliage"),
    "Line art": ("clean line art drawing of {prompt}, black ink outlines on white, minimal shading",
                 "photograph, colour, texture, gradient, 3d"),
}
DEFAULT_STYLE = "(No style)"
SCHEDULERS = ("Euler", "DPM++ 2M Karras", "LCM")
#: The official demo's fast mode: LCM-LoRA with the LCM scheduler, 5 steps, guidance 1.5.
FAST_STEPS, FAST_GUIDANCE = 5, 1.5


def apply_style(style: str, prompt: str, negative: str) -> tuple[str, str]:
    """The prompt inside the style's template; the style's negative prompt before the user's."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {list(STYLES)}")
    template, style_negative = STYLES[style]
    return template.replace("{prompt}", prompt), ", ".join(p for p in (style_negative, negative) if p)


def photo_framing(width: int, height: int, long_side: int = 1280, multiple: int = 64) -> tuple[int, int]:
    """The official demo's output size for a photo: short side to 1024, then the long side to
    ``long_side`` (rounded as it rounds), each side down to a multiple of ``multiple``; aspect kept."""
    r = 1024 / min(width, height)
    w, h = round(r * width), round(r * height)
    r = long_side / max(w, h)
    return max(multiple, round(r * w) // multiple * multiple), max(multiple, round(r * h) // multiple * multiple)


@dataclass
class GenerationSettings:
    """Per-request controls. ``ip_scale`` is the paper's λ (weight of the face cross-attention).

    ``width``/``height`` None: the official framing (the reference or pose photo at ``long_side``,
    multiples of 64, aspect kept); given: that size, the photo scaled to cover it and centred.
    ``face_region_only``: both the IdentityNet and the face cross-attention act inside the face
    box (grown by ``face_margin`` of its size on each side). ``scheduler`` "LCM" is fast mode.
    """

    prompt: str
    negative_prompt: str = DEMO_NEGATIVE_PROMPT
    ip_scale: float = 0.8
    identitynet_scale: float = 0.8
    steps: int = 30
    guidance: float = 5.0
    seed: int = 0
    width: int | None = None
    height: int | None = None
    face_region_only: bool = False
    long_side: int = 1280
    face_margin: float = 0.0
    style: str = DEFAULT_STYLE
    scheduler: str = "Euler"

    def validate(self) -> None:
        problems = []
        if not 0.0 <= self.ip_scale <= 1.5:
            problems.append(f"λ (ip_scale) must be within [0, 1.5], got {self.ip_scale}")
        if not 0.0 <= self.identitynet_scale <= 1.5:
            problems.append(f"IdentityNet strength must be within [0, 1.5], got {self.identitynet_scale}")
        if not 1 <= self.steps <= 150:
            problems.append(f"steps must be within [1, 150], got {self.steps}")
        if not 0.0 <= self.guidance <= 30.0:
            problems.append(f"guidance must be within [0, 30], got {self.guidance}")
        if (self.width is None) != (self.height is None):
            problems.append("give both width and height, or neither (the photo's framing)")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (not 64 <= v <= 2048 or v % 8):
                problems.append(f"{name} must be a multiple of 8 within [64, 2048], got {v}")
        if not 64 <= self.long_side <= 2048 or self.long_side % 64:
            problems.append(f"long side must be a multiple of 64 within [64, 2048], got {self.long_side}")
        if not 0.0 <= self.face_margin <= 1.0:
            problems.append(f"face margin must be within [0, 1] (a share of the face box), got {self.face_margin}")
        if self.style not in STYLES:
            problems.append(f"unknown style {self.style!r}; choose from {list(STYLES)}")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"unknown scheduler {self.scheduler!r}; choose from {list(SCHEDULERS)}")
        if problems:
            raise ValueError("; ".join(problems))


def make_scheduler(name: str, config):
    """A fresh scheduler of the named kind from the base's scheduler config (Euler: the demo's choice)."""
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

    if name == "Euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "DPM++ 2M Karras":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       use_karras_sigmas=True)
    if name == "LCM":
        return LCMScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}; choose from {list(SCHEDULERS)}")
