"""A local OpenAI-compatible HTTP server (POST /v1/chat/completions) for tests and benchmarks.

It speaks the real wire format, so the real ``openai`` client talks to it over HTTP. A
``responder(n, body)`` decides each reply: a caption, an HTTP error (429/500 with retry-after),
a slow answer, or a request held until the test releases it (answered then, or failed). Every request body and Authorization header is kept.

It also speaks the Batch API: ``POST /v1/files`` (multipart upload), ``POST /v1/batches``,
``GET /v1/batches/{id}``, ``GET /v1/batches``, ``GET /v1/files/{id}/content``. A batch's lines
go through the same responder; a non-200 reply becomes that line's error in the output file.
While ``hold_batches`` is set, batches stay ``in_progress``.
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
    hang: bool = False  # hold until the test sets ``server.release``, then fail with a 503
    hold: bool = False  # hold until the test sets ``server.release``, then answer as scripted


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
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.hold_batches = threading.Event()  # set: batches wait in_progress until cleared
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.endswith("/batches"):
                    with server._lock:
                        data = [server._batch_view(b) for b in server.batches.values()]
                    return self._send(200, {"object": "list", "data": data, "has_more": False})
                if "/batches/" in path:
                    b = server.batches.get(path.rsplit("/", 1)[1])
                    if b is None:
                        return self._send(404, {"error": {"message": "no such batch"}})
                    return self._send(200, server._batch_view(b))
                if path.endswith("/content") and "/files/" in path:
                    data = server.files.get(path.split("/files/")[1].split("/")[0])
                    if data is None:
                        return self._send(404, {"error": {"message": "no such file"}})
                    self.send_response(200)
                    self.send_header("content-type", "application/octet-stream")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                return self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                if self.path.endswith("/files"):
                    return self._send(200, server._upload(self.headers.get("content-type", ""), raw))
                body = json.loads(raw or b"{}")
                if self.path.endswith("/batches"):
                    return self._send(200, server._create_batch(body))
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with server._lock:
                    server.requests.append(body)
                    server.auth_headers.append(self.headers.get("authorization", ""))
                    n = len(server.requests)
                reply = server.responder(n, body)
                if reply.hang or reply.hold:
                    server.release.wait(timeout=300)  # the bound only ends a forgotten hold
                if reply.hang:
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

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # socketserver's 5 overflows when 16 clients connect at once (resets)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- Batch API ---------------------------------------------------------------------------
    def _upload(self, content_type: str, raw: bytes) -> dict:
        from email.parser import BytesParser
        from email.policy import HTTP

        msg = BytesParser(policy=HTTP).parsebytes(b"content-type: " + content_type.encode() + b"\r\n\r\n" + raw)
        data = next(part.get_payload(decode=True) for part in msg.iter_parts()
                    if part.get_param("name", header="content-disposition") == "file")
        with self._lock:
            fid = f"file-{len(self.files) + 1}"
            self.files[fid] = data
        return {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": "batch.jsonl", "purpose": "batch", "status": "processed"}

    def _create_batch(self, body: dict) -> dict:
        with self._lock:
            bid = f"batch_{len(self.batches) + 1}"
            lines = [json.loads(x) for x in self.files[body["input_file_id"]].decode().splitlines() if x.strip()]
            b = {"id": bid, "input_file_id": body["input_file_id"], "endpoint": body["endpoint"],
                 "completion_window": body["completion_window"], "status": "in_progress", "lines": lines,
                 "created_at": int(time.time()), "done": 0, "failed": 0, "output_file_id": None,
                 "error_file_id": None, "metadata": body.get("metadata")}
            self.batches[bid] = b
        threading.Thread(target=self._run_batch, args=(b,), daemon=True).start()
        return self._batch_view(b)

    def _run_batch(self, b: dict) -> None:
        while self.hold_batches.is_set():
            time.sleep(0.05)
        out, err = [], []
        for line in b["lines"]:
            with self._lock:
                self.requests.append(line["body"])
                n = len(self.requests)
            reply = self.responder(n, line["body"])
            if reply.status == 200:
                body = {"id": f"chatcmpl-b{n}", "object": "chat.completion", "model": line["body"].get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": reply.text}}],
                        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                                  "total_tokens": reply.prompt_tokens + reply.completion_tokens}}
                out.append({"id": f"r{n}", "custom_id": line["custom_id"], "error": None,
                            "response": {"status_code": 200, "request_id": f"q{n}", "body": body}})
            else:
                err.append({"id": f"r{n}", "custom_id": line["custom_id"], "response": None,
                            "error": {"code": "server_error", "message": f"scripted {reply.status}"}})
        with self._lock:
            for name, rows in (("output_file_id", out), ("error_file_id", err)):
                if rows:
                    fid = f"file-{len(self.files) + 1}"
                    self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                    b[name] = fid
            b["done"], b["failed"], b["status"] = len(out), len(err), "completed"

    def _batch_view(self, b: dict) -> dict:
        return {"id": b["id"], "object": "batch", "endpoint": b["endpoint"], "input_file_id": b["input_file_id"],
                "completion_window": b["completion_window"], "status": b["status"], "created_at": b["created_at"],
                "output_file_id": b["output_file_id"], "error_file_id": b["error_file_id"], "metadata": b["metadata"],
                "request_counts": {"total": len(b["lines"]), "completed": b["done"], "failed": b["failed"]}}

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
