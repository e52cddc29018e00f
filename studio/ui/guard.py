"""Who may fetch a file: an ASGI middleware in front of Gradio's file route.

Gradio serves every file a handler returned (copied into its cache) to anyone who is signed in,
and on a Space to anyone at all. The studio's photos are faces and its database holds
embeddings, so a file is served only by role: admins get what their pages showed, everyone
else only the studio's own UI assets and the files the app granted to them (annotation items).
The workspace itself (database, WAL, logs, users file) is never in Gradio's allowed paths.
"""
from __future__ import annotations

import json
import threading
import urllib.parse
from collections import defaultdict
from pathlib import Path

from ..auth import AccessPolicy
from ..config import ASSETS_DIR

FILE_ROUTES = ("/gradio_api/file=", "/file=")
PUBLIC_DIRS = (ASSETS_DIR / "ui",)


class Grants:
    """Files handed to a non-admin user for their work (e.g. the samples of their study)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, set[str]] = defaultdict(set)

    def grant(self, user: str, path: str | Path) -> None:
        """Let ``user`` fetch this file, also as Gradio's cached copy (same name: an unguessable hash)."""
        with self._lock:
            self._files[user].add(str(Path(path).resolve()))
            self._files[user].add(Path(path).name)

    def allows(self, user: str | None, path: Path) -> bool:
        with self._lock:
            mine = self._files.get(user, ()) if user else ()
            return str(path) in mine or path.name in mine


def user_from_scope(policy: AccessPolicy, scope: dict) -> str | None:
    """The signed-in user of an HTTP request, the way Gradio itself decides it."""
    if policy.mode == "hf":
        session = scope.get("session") or {}
        return ((session.get("oauth_info") or {}).get("userinfo") or {}).get("preferred_username")
    if policy.mode == "local":
        app = scope.get("app")
        cookies = _cookies(scope)
        cookie_id = getattr(app, "cookie_id", None)
        token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
        return getattr(app, "tokens", {}).get(token)
    return None


def _cookies(scope: dict) -> dict[str, str]:
    from http.cookies import SimpleCookie

    jar = SimpleCookie()
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header is nobody
                return {}
    return {k: m.value for k, m in jar.items()}


def requested_file(path: str, root_path: str = "") -> Path | None:
    """The file a Gradio file-route URL asks for, or None when the URL is not a file route."""
    if root_path and path.startswith(root_path):
        path = path[len(root_path):]
    for prefix in FILE_ROUTES:
        if path.startswith(prefix):
            raw = urllib.parse.unquote(path[len(prefix):])
            try:
                return Path(raw).resolve()
            except (OSError, ValueError):
                return Path("/nonexistent")
    return None


class FileGuard:
    """Refuse Gradio file requests that the caller's role does not allow (403, nothing else said)."""

    def __init__(self, app, policy: AccessPolicy, grants: Grants):
        self.app = app
        self.policy = policy
        self.grants = grants

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            target = requested_file(scope.get("path", ""), scope.get("root_path", ""))
            if target is not None and not self.allowed(scope, target):
                body = json.dumps({"detail": "Access denied: this file is not available to you."}).encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def allowed(self, scope: dict, target: Path) -> bool:
        if any(target.is_relative_to(d.resolve()) for d in PUBLIC_DIRS):
            return True
        user = user_from_scope(self.policy, scope)
        if self.policy.role_of(user) == "admin":
            return True
        return self.grants.allows(user, target)
