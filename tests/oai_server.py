"""A local OpenAI-compatible HTTP server (POST /v1/chat/completions) for tests and benchmarks.

It speaks the real wire format, so the real ``openai`` client talks to it over HTTP. A
``responder(n, body)`` decides each reply: a caption, an HTTP error (429/500 with retry-after),
a slow answer, or a hang until released. Every request body and Authorization header is kept.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    text: str = "A man with short dark hair smiles warmly at the camera."
    delay: float = 0.0
    prompt_tokens: int = 1000
    completion_tokens: int = 50
    headers: dict = field(default_factory=dict)
    hang: bool = False


def image_key(body: dict) -> str:
    """A short hash of the image a request carries, to script replies per image."""
    url = body["messages"][0]["content"][1]["image_url"]["url"]
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def decode_image(body: dict):
    from PIL import Image

    url = body["messages"][0]["content"][1]["image_url"]["url"]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


class LocalOpenAI:
    def __init__(self, responder=None):
        self.responder = responder or (lambda n, body: Reply())
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self.answered: list[str] = []  # image keys of 200 replies actually sent
        self.release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with server._lock:
                    server.requests.append(body)
                    server.auth_headers.append(self.headers.get("authorization", ""))
                    n = len(server.requests)
                reply = server.responder(n, body)
                if reply.hang:
                    server.release.wait(timeout=120)
                    return self._send(503, {"error": {"message": "released"}})
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    return self._send(reply.status, {"error": {"message": f"scripted {reply.status}", "type": "test"}},
                                      reply.headers)
                payload = {
                    "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": reply.text}}],
                    "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                              "total_tokens": reply.prompt_tokens + reply.completion_tokens},
                }
                try:
                    self._send(200, payload, reply.headers)
                except (BrokenPipeError, ConnectionResetError):
                    return
                with server._lock:
                    server.answered.append(image_key(body))

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "LocalOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
