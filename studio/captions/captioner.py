"""Captioning with GPT-4o (or any OpenAI-compatible server) using the paper's prompt (§3.3).

Every kept image gets a short, face-focused caption. Requests go through the ``openai`` client,
whose own retries and backoff handle 429 and 5xx; a thread pool bounds how many are in flight.
A caption is keyed by image hash + prompt version + model + parameters, and each one is
committed as it arrives, so a killed run resumes without asking again for finished images.

The API key is passed in by the caller (``OPENAI_API_KEY`` in the CLI, a session-only field in
the UI) and handed to the client only: it is never stored, logged or written anywhere.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from PIL import Image

from .checks import FLAGS, check_caption  # noqa: F401  (FLAGS re-exported for the UI)
from ..images import ImageError, load_rgb
from ..runs.parallel import BoundedMap, usable_cpus
from ..workspace import Workspace

log = logging.getLogger(__name__)

#: The paper's three-part prompt, verbatim (typos included: it is what the dataset was made with).
PROMPT_PARTS = (
    "Your goal is to using less than 4 fluent sentences to generate short, descriptive captions for this image.",
    "Note that your description should be as detailed as possible to describe the features of the face in the image.",
    "Please note that your answer should not include any tabulation format.",
)
PROMPT = " ".join(PROMPT_PARTS)
PROMPT_VERSION = "crossfaceid-2025-v1"



@dataclass(frozen=True)
class CaptionSettings:
    """Model, endpoint and sampling parameters (defaults: the paper's), plus run limits and prices.

    Prices are USD per million tokens, used only for the cost estimate; the defaults are
    OpenAI's published gpt-4o prices ($2.50 input, $10.00 output); set them for another model.
    """

    model: str = "gpt-4o"
    base_url: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    max_tokens: int = 4096
    image_max_side: int = 768
    jpeg_quality: int = 90
    concurrency: int = 8
    timeout: float = 60.0
    max_retries: int = 5
    price_input_per_mtok: float = 2.50
    price_output_per_mtok: float = 10.00

    def __post_init__(self) -> None:
        problems = []
        if not self.model:
            problems.append("model must not be empty")
        if not 1 <= self.concurrency <= 256:
            problems.append(f"concurrency must be between 1 and 256, got {self.concurrency}")
        if self.timeout <= 0:
            problems.append("timeout must be positive")
        if self.max_retries < 0:
            problems.append("max_retries must be >= 0")
        if not 64 <= self.image_max_side <= 4096:
            problems.append("image_max_side must be between 64 and 4096")
        if problems:
            raise ValueError("invalid caption settings: " + "; ".join(problems))

    def request_params(self) -> dict:
        """What reaches the server besides the messages."""
        return {"model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                "frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty,
                "max_tokens": self.max_tokens}

    def key_params(self) -> dict:
        """Everything that changes the answer, for the cache key."""
        return {**self.request_params(), "prompt_version": PROMPT_VERSION, "image_max_side": self.image_max_side,
                "jpeg_quality": self.jpeg_quality}

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_input_per_mtok + completion_tokens * self.price_output_per_mtok) / 1e6


def cache_key(image_sha256: str, settings: CaptionSettings) -> str:
    payload = json.dumps({"image": image_sha256, **settings.key_params()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def image_data_url(rgb, max_side: int, quality: int) -> str:
    """The photo downscaled (longest side <= max_side) as a base64 JPEG data URL."""
    img = Image.fromarray(rgb)
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def media_data_url(ws: Workspace, media_path: str, settings: CaptionSettings) -> str:
    """A workspace photo as the data URL sent to the model (decoded at reduced scale when it can be)."""
    img = load_rgb(ws.media_path(media_path), draft_side=settings.image_max_side)
    return image_data_url(img.rgb, settings.image_max_side, settings.jpeg_quality)


def encode_ahead(ws: Workspace, todo: list[tuple[int, str, str]], settings: CaptionSettings,
                 pool: ThreadPoolExecutor) -> BoundedMap:
    """``(job, data URL, error)`` for each ``(image id, key, media path)`` job, as they are encoded on ``pool``
    (one thread per core), a few ahead of their use. A photo that cannot be encoded is that job's error."""
    def encode(job):
        try:
            return job, media_data_url(ws, job[2], settings), None
        except ImageError as exc:
            return job, None, str(exc)
        except Exception as exc:  # any other surprise is this photo's problem, not the batch's
            return job, None, describe_error(exc, settings)

    return BoundedMap(pool, encode, todo, ahead=2 * usable_cpus(), ordered=False)


def build_messages(data_url: str) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "text", "text": PROMPT},
        {"type": "image_url", "image_url": {"url": data_url}},
    ]}]


# -- the run -----------------------------------------------------------------------------------

@dataclass
class CaptionReport:
    captioned: int = 0
    skipped: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    kept_reviewed: int = 0  # new versions stored beside a human-reviewed caption that stays current
    flagged: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    rate_limits: dict = field(default_factory=dict)  # the key's limits per window, as the server reported them
    rate_limit_wait_s: float = 0.0  # time spent waiting to stay under them

    def stored(self, flags: list[str], current: bool, prompt_tokens: int, completion_tokens: int,
               cost_usd: float) -> None:
        """Count one model answer that was stored (``current``: it became the image's caption)."""
        self.captioned += 1
        self.kept_reviewed += not current
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += cost_usd
        for f in flags:
            self.flagged[f] = self.flagged.get(f, 0) + 1

    def fail(self, image_id: int, message: str) -> None:
        self.failed += 1
        self.errors.append(f"image {image_id}: {message}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["cost_usd"] = round(self.cost_usd, 6)
        d["cost_per_caption_usd"] = round(self.cost_usd / self.captioned, 6) if self.captioned else 0.0
        return d


def make_client(api_key: str | None, settings: CaptionSettings):
    """The openai client with our endpoint, timeout and retry budget (its backoff handles 429/5xx)."""
    from openai import OpenAI

    if not api_key:
        raise ValueError("no API key: set OPENAI_API_KEY (CLI) or enter it in the Captions tab (kept for the session only)")
    return OpenAI(api_key=api_key, base_url=settings.base_url or None, timeout=settings.timeout,
                  max_retries=settings.max_retries)


def request_caption(client, settings: CaptionSettings, data_url: str, limiter=None) -> tuple[str, int, int]:
    """One chat completion; returns (text, prompt tokens, completion tokens).

    ``limiter``: a :class:`studio.captions.ratelimit.RateLimiter` that paces the start by the key's limits
    and reads the ``x-ratelimit-*`` headers of the answer (or of the error).
    """
    estimate = (limiter.prompt_estimate + settings.max_tokens) if limiter is not None else 0
    headers = None
    if limiter is not None:
        limiter.acquire(estimate)
    try:
        raw = client.chat.completions.with_raw_response.create(messages=build_messages(data_url),
                                                               **settings.request_params())
        headers = raw.headers
        resp = raw.parse()
    except Exception as exc:
        headers = getattr(getattr(exc, "response", None), "headers", None)
        raise
    finally:
        if limiter is not None:
            limiter.release(estimate, headers)
    text = (resp.choices[0].message.content or "").strip() if resp.choices else ""
    usage = resp.usage
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    if limiter is not None and prompt:
        limiter.prompt_estimate = prompt
    return text, prompt, int(getattr(usage, "completion_tokens", 0) or 0)


def store_model_caption(ws: Workspace, image_id: int, key: str, settings: CaptionSettings, text: str,
                        prompt_tokens: int, completion_tokens: int, author: str, vocabulary=None,
                        overwrite_reviewed: bool = False, run_id: int | None = None) -> tuple[list[str], bool]:
    """Store a model answer as a new version; returns (flags, whether it became current)."""
    from ..dataset.attributes import tag_image

    flags = check_caption(text)
    with ws.store.transaction():
        _, current = ws.store.add_caption(
            image_id, text, status="generated", origin="model", author=author, flags=flags, model=settings.model,
            prompt_version=PROMPT_VERSION, params=settings.key_params(), cache_key=key, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, cost_usd=settings.cost(prompt_tokens, completion_tokens),
            overwrite_reviewed=overwrite_reviewed, run_id=run_id)
        if current:  # tags follow the current caption only
            tag_image(ws, image_id, text, vocabulary)
    return flags, current


def pending_captions(ws: Workspace, settings: CaptionSettings, kept_only: bool,
                     report: CaptionReport) -> list[tuple[int, str, str]]:
    """(image id, cache key, media path) of each image with no caption under ``settings`` yet.

    The others are counted as skipped: a rerun, synchronous or batched, asks for nothing twice.
    """
    done = ws.store.captioned_keys()
    todo = []
    for image_id, sha, media in ws.store.images_for_captioning(kept_only):
        key = cache_key(sha, settings)
        if key in done:
            report.skipped += 1
        else:
            todo.append((image_id, key, media))
    return todo


def caption_workspace(ws: Workspace, settings: CaptionSettings, api_key: str | None, *, kept_only: bool = True,
                      author: str = "captioner", progress: Callable[..., Iterable] | None = None,
                      client=None, overwrite_reviewed: bool = False, run_id: int | None = None) -> CaptionReport:
    """Caption every image of the run that has no caption under these settings yet.

    An image whose current caption a person approved or edited keeps it; the new answer is
    stored as another version to compare, unless ``overwrite_reviewed``.
    """
    from ..dataset.attributes import compile_vocabulary, vocabulary

    from .ratelimit import RateLimiter

    start = time.perf_counter()
    client = client or make_client(api_key, settings)
    limiter = RateLimiter()  # paces by the key's x-ratelimit-* headers; no headers, no pacing
    compiled = compile_vocabulary(vocabulary(ws))  # once per run, not per caption
    report = CaptionReport()
    todo = pending_captions(ws, settings, kept_only, report)

    def work(encoded):
        job, url, error = encoded
        if error is not None:
            return encoded
        try:
            return job, request_caption(client, settings, url, limiter), None
        except Exception as exc:  # the client has retried already: record and go on with the batch
            return job, None, redact_secret(describe_error(exc, settings), api_key)

    def keep(result) -> None:
        (image_id, key, _), answer, error = result
        if error is not None:
            report.fail(image_id, error)
            log.warning("caption failed for image %s: %s", image_id, error)
            return
        text, p_tok, c_tok = answer
        flags, current = store_model_caption(ws, image_id, key, settings, text, p_tok, c_tok, author, compiled,
                                              overwrite_reviewed, run_id)
        report.stored(flags, current, p_tok, c_tok, settings.cost(p_tok, c_tok))

    # while requests wait (for the first answer's rate limits, for the server) the CPU goes on encoding,
    # and 16 request threads do not fight over 2 cores for it
    with ThreadPoolExecutor(usable_cpus()) as encoders, ThreadPoolExecutor(settings.concurrency) as pool:
        encoded = encode_ahead(ws, todo, settings, encoders)
        # keep the pool busy; store each answer as it arrives, so a hung request holds back no paid answer
        mapper = BoundedMap(pool, work, encoded, ahead=2 * settings.concurrency, ordered=False)
        results: Iterable = mapper
        if progress is not None:
            results = progress(results, total=len(todo), desc="caption", unit="img")
        try:
            for result in results:
                keep(result)
        except BaseException:  # stopped (a cancel, Ctrl-C): keep the answers already paid for
            encoded.settle()
            for result in mapper.settle():
                keep(result)
            raise
    report.seconds = round(time.perf_counter() - start, 3)
    report.rate_limit_wait_s = round(limiter.waited, 3)
    report.rate_limits = dict(limiter.limits)
    return report


def regenerate(ws: Workspace, image_id: int, settings: CaptionSettings, api_key: str | None, author: str,
               client=None) -> dict:
    """Ask the model again for one image (even if a caption exists) and make it current: the person asked."""
    rows = ws.store.image_table(image_ids=[image_id])
    if not rows:
        raise ValueError(f"no image with id {image_id}")
    client = client or make_client(api_key, settings)
    try:
        text, p_tok, c_tok = request_caption(client, settings, media_data_url(ws, rows[0]["media_path"], settings))
    except ImageError as exc:
        raise ValueError(str(exc)) from None
    except Exception as exc:
        raise ValueError(redact_secret(describe_error(exc, settings), api_key)) from None
    store_model_caption(ws, image_id, cache_key(rows[0]["sha256"], settings), settings, text, p_tok, c_tok, author,
                         overwrite_reviewed=True)
    return ws.store.current_caption(image_id)


def describe_error(exc: Exception, settings: CaptionSettings) -> str:
    """One line for a failed request; a connection failure names the endpoint it tried."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        where = settings.base_url or "https://api.openai.com/v1"
        what = "timed out" if isinstance(exc, openai.APITimeoutError) else "could not connect"
        return f"{type(exc).__name__}: {what} to {where} (after {settings.max_retries} retries)"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def redact_secret(text: str, secret: str | None) -> str:
    """An error message without the API key in it (a server may echo the key back)."""
    return text.replace(secret, "[key]") if secret else text


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [""])[0][:300]
