"""Accounts and roles: a local users file with hashed passwords, or Hugging Face login on a Space.

Roles: ``admin`` (everything) and ``annotator`` (the annotation tab only). Without any auth the
studio is a single-user admin tool bound to 127.0.0.1. Passwords are stored only as salted
scrypt hashes; nothing here logs a password.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROLES = ("admin", "annotator")
_N, _R, _P = 2**14, 8, 1


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(base64.b64decode(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, base64.b64decode(digest))


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random password with the same parameters, checked for names that are not users."""
    return hash_password(secrets.token_urlsafe(16))


class SignInThrottle:
    """Back-off after repeated wrong passwords, per user name and per client address (in memory).

    The first ``free`` failures cost nothing; each further one doubles the wait before the next
    try is even checked (1 s, 2 s, 4 s ... at most ``cap`` s). A success clears the name and the
    address. Waits are for both keys, so neither many names from one address nor many addresses
    on one name get round it.
    """

    def __init__(self, free: int = 5, cap: float = 60.0, clock=time.monotonic):
        self.free, self.cap, self.clock = free, cap, clock
        self._lock = threading.Lock()
        self._fails: dict[str, tuple[int, float]] = {}  # key -> (failures in a row, time of the last)

    def _wait(self, key: str, now: float) -> float:
        count, last = self._fails.get(key, (0, 0.0))
        if count < self.free:
            return 0.0
        return max(0.0, last + min(self.cap, 2.0 ** (count - self.free)) - now)

    def wait(self, user: str, address: str) -> float:
        """Seconds until this name may try again from this address (0: now)."""
        now = self.clock()
        with self._lock:
            return max(self._wait("user:" + user, now), self._wait("addr:" + address, now))

    def failed(self, user: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            for key in ("user:" + user, "addr:" + address):
                count, _ = self._fails.get(key, (0, 0.0))
                self._fails[key] = (count + 1, now)
                if count + 1 >= self.free:
                    log.warning("sign-in: %d wrong passwords in a row for %s", count + 1, key)
            if len(self._fails) > 100_000:  # a flood of names: forget the oldest half
                for key, _ in sorted(self._fails.items(), key=lambda kv: kv[1][1])[:50_000]:
                    del self._fails[key]

    def succeeded(self, user: str, address: str) -> None:
        with self._lock:
            self._fails.pop("user:" + user, None)
            self._fails.pop("addr:" + address, None)


@dataclass
class UsersFile:
    """``{"users": {name: {"role": ..., "password": <scrypt hash>}}}`` in a JSON file."""

    path: Path

    def load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{self.path}: not valid JSON ({exc})") from None
        users = data.get("users") if isinstance(data, dict) else None
        if not isinstance(users, dict):
            raise ValueError(f"{self.path}: expected {{\"users\": {{name: {{role, password}}}}}}")
        for name, u in users.items():
            if not isinstance(u, dict) or u.get("role") not in ROLES or not isinstance(u.get("password"), str):
                raise ValueError(f"{self.path}: user {name!r} needs a role in {ROLES} and a password hash")
        return users

    def add(self, name: str, password: str, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        if not name or ":" in name:
            raise ValueError("user name must be non-empty and contain no ':'")
        if len(password) < 8:
            raise ValueError("password must have at least 8 characters")
        users = self.load()
        users[name] = {"role": role, "password": hash_password(password)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({"users": users}, indent=2), encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def verify(self, name: str, password: str) -> bool:
        """A wrong password and an unknown name cost the same scrypt: the time does not tell names apart."""
        user = self.load().get(name)
        ok = check_password(password, user["password"] if user else _dummy_hash())
        return bool(user) and ok

    def role(self, name: str) -> str | None:
        user = self.load().get(name)
        return user["role"] if user else None


@dataclass(frozen=True)
class AccessPolicy:
    """How the running app decides who someone is and what they may see."""

    mode: str  # "none" (local single user), "local" (users file), "hf" (Hugging Face login on a Space)
    users: UsersFile | None = None
    hf_admins: frozenset[str] = frozenset()

    def describe(self) -> str:
        return {"none": "single user (admin) on this machine", "local": f"accounts from {self.users.path if self.users else '?'}",
                "hf": f"Hugging Face sign-in; admins: {', '.join(sorted(self.hf_admins)) or 'none set (STUDIO_ADMINS)'}"}[self.mode]

    def role_of(self, username: str | None) -> str | None:
        """The role of a signed-in user; None means no access."""
        if self.mode == "none":
            return "admin"
        if not username:
            return None
        if self.mode == "local":
            return self.users.role(username) if self.users else None
        return "admin" if username in self.hf_admins else "annotator"


def policy_from(auth_file: str | Path | None, host: str, on_space: bool, hf_admins: str = "") -> AccessPolicy:
    """Pick the access mode from the launch options; refuse an open server without accounts."""
    if auth_file:
        users = UsersFile(Path(auth_file))
        if not users.load():
            raise ValueError(f"--auth {auth_file}: no users; add one with `python -m studio users add NAME --role admin --auth {auth_file}`")
        return AccessPolicy("local", users=users)
    if on_space:
        return AccessPolicy("hf", hf_admins=frozenset(u.strip() for u in hf_admins.split(",") if u.strip()))
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"--host {host} without --auth would expose the studio with no login; "
                         "create a users file with `python -m studio users add` and pass --auth FILE")
    return AccessPolicy("none")
