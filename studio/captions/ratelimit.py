"""Keep captioning under the API key's own rate limits, read from the ``x-ratelimit-*`` headers.

OpenAI answers every request with the key's limits and what remains of them
(``x-ratelimit-limit-requests``, ``-remaining-requests``, ``-reset-requests`` and the same for
tokens; resets look like ``1s``, ``6m0s`` or ``120ms``). Before a request starts, :class:`RateLimiter`
waits while the window's remaining requests or tokens (less what is already in flight) would not
cover it. A server that sends no such headers (vLLM, Ollama) is not paced: the concurrency cap alone
applies, as before. Token estimates follow the API's own rule: prompt tokens plus ``max_tokens``.
"""
from __future__ import annotations

import re
import threading
import time

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str | None) -> float | None:
    """Seconds in an OpenAI reset header (``1s``, ``6m0s``, ``120ms``, ``0.5s``); None when absent or unreadable."""
    if not value:
        return None
    parts = re.findall(r"([0-9]*\.?[0-9]+)(ms|s|m|h)", value.strip())
    if not parts:
        try:
            return float(value)
        except ValueError:
            return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


class RateLimiter:
    """Paces request starts by the remaining requests/tokens the server last reported."""

    def __init__(self, clock=time.monotonic, sleep=time.sleep):
        self._cond = threading.Condition()
        self._clock, self._sleep = clock, sleep
        self.limits: dict[str, int] = {}  # requests / tokens per window, as reported
        self._remaining: dict[str, float] = {}
        self._reset_at: dict[str, float] = {}
        self._in_flight = {"requests": 0, "tokens": 0}
        self._known: bool | None = None  # None until the first answer says whether the server reports limits
        self.prompt_estimate = 1000  # prompt tokens per request, updated from the answers' usage
        self.waited = 0.0  # seconds spent waiting for the window (reported)

    @property
    def paced(self) -> bool:
        return bool(self._remaining)

    def _budget(self, kind: str, now: float) -> float:
        if kind not in self._remaining:
            return float("inf")
        if now >= self._reset_at.get(kind, 0.0):
            return float(self.limits.get(kind, 0)) or float("inf")  # the window has reset
        return self._remaining[kind]

    def acquire(self, tokens: int) -> None:
        """Block until a request of ~``tokens`` fits in what remains of the window, then count it in flight."""
        with self._cond:
            while True:
                now = self._clock()
                if self._known is None and self._in_flight["requests"] > 0:  # the first answer tells the limits
                    start = self._clock()
                    self._cond.wait(timeout=0.05)
                    self.waited += self._clock() - start
                    continue
                need = {"requests": 1, "tokens": tokens}
                # conservative: what the server counted already may still be in flight here too. A request
                # larger than a whole window (max_tokens above the key's TPM) starts alone in a fresh window.
                short = [k for k in need if self._budget(k, now) - self._in_flight[k] < need[k]
                         and not (self._in_flight[k] == 0 and self._budget(k, now) >= self.limits.get(k, 0) > 0)]
                if not short:
                    self._in_flight["requests"] += 1
                    self._in_flight["tokens"] += tokens
                    return
                waits = [self._reset_at.get(k, now) - now for k in short]
                delay = max(0.01, min([w for w in waits if w > 0] or [0.05]))
                start = self._clock()
                self._cond.wait(timeout=delay)
                self.waited += self._clock() - start

    def release(self, tokens: int, headers=None) -> None:
        """A request finished: take it out of flight and read the server's latest numbers."""
        with self._cond:
            self._in_flight["requests"] -= 1
            self._in_flight["tokens"] -= tokens
            if headers is not None:
                self._update(headers)
                if self._known is None:
                    self._known = bool(self._remaining)
            elif self._known is None and self._in_flight["requests"] == 0:
                self._known = False  # no answer to learn from (a connection error): do not hold the others back
            self._cond.notify_all()

    def _update(self, headers) -> None:
        now = self._clock()
        for kind in ("requests", "tokens"):
            limit = headers.get(f"x-ratelimit-limit-{kind}")
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
            try:
                if limit is not None:
                    self.limits[kind] = int(float(limit))
                if remaining is not None:
                    self._remaining[kind] = float(remaining)
                    self._reset_at[kind] = now + (reset if reset is not None else 60.0)
            except ValueError:
                continue
