"""Accounts and roles: a local users file with hashed passwords, or Hugging Face login on a Space.

Roles: ``admin`` (everything) and ``annotator`` (the annotation tab only). Without any auth the
studio is a single-user admin tool bound to 127.0.0.1. Passwords are stored only as salted
scrypt hashes; nothing here logs a password.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

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
        user = self.load().get(name)
        return bool(user) and check_password(password, user["password"])

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
