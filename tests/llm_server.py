"""A loopback chat-completions server for tests, replying from a per-test script.

It speaks enough of the OpenAI protocol for the official `openai` client:
`POST /v1/chat/completions` with a JSON body, answered with `choices` and `usage`, or with
an error status and an `{"error": {...}}` body. It listens on 127.0.0.1 on a free port, in a
daemon thread; every reply (delays included) is bounded, and `stop()` wakes delayed replies
so nothing outlives the test.

    with ScriptedServer([Reply("X=Loc(image=IMAGE, object='cat')")]) as server:
        client = scripted_client(server)
        ...
        server.requests  # the JSON bodies received, in order
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_DELAY = 10.0  # seconds; no scripted reply waits longer


@dataclass
class Reply:
    """One scripted answer.

    Attributes:
        content: the completion text, or a list of texts (one choice each).
        status: HTTP status; not 200 sends an error body with `content` as its message.
        delay: seconds to wait before answering (bounded by MAX_DELAY).
        headers: extra response headers (e.g. {"retry-after": "0"}).
        raw: a body to send as it is instead (with `status` and `content_type`): what a
            proxy's error page or a broken server answers.
        content_type: the content-type of a `raw` body.
    """

    content: str | list[str] = ""
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json"


class ScriptedServer:
    """Serves `script` in order; past its end, answers HTTP 400 "script exhausted".

    With `respond` (a function of the request body giving a `Reply` or a text), every
    request is answered by it instead: for requests sent in parallel, whose order is not
    known, each answered by what it asks."""

    def __init__(self, script: list[Reply | str], respond: Any = None):
        self.script = [r if isinstance(r, Reply) else Reply(r) for r in script]
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _next(self, body: dict[str, Any], path: str) -> Reply:
        with self._lock:
            self.requests.append(body)
            self.paths.append(path)
            if self.respond is not None:
                reply = self.respond(body)
                return reply if isinstance(reply, Reply) else Reply(reply)
            if len(self.requests) <= len(self.script):
                return self.script[len(self.requests) - 1]
        return Reply("script exhausted: the test sent more requests than it scripted", status=400)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = MAX_DELAY + 5  # a stuck client can't hold a thread forever

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                reply = server._next(body, self.path)
                if reply.delay:
                    server._stopping.wait(min(reply.delay, MAX_DELAY))
                if reply.raw is not None:
                    self._send_bytes(reply.status, reply.raw, reply.content_type, reply.headers)
                    return
                if reply.status != 200:
                    message = reply.content if isinstance(reply.content, str) else "error"
                    self._send(reply.status, {"error": {"message": message, "type": "test"}},
                               reply.headers)
                    return
                texts = [reply.content] if isinstance(reply.content, str) else list(reply.content)
                prompt = sum(len(str(m.get("content", "")).split())
                             for m in body.get("messages", []))
                completion = sum(len(t.split()) for t in texts)
                self._send(200, {
                    "id": f"chatcmpl-test-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "test-model"),
                    "choices": [{"index": i, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": t}}
                                for i, t in enumerate(texts)],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion},
                }, reply.headers)

            def _send(self, status: int, payload: dict[str, Any],
                      headers: dict[str, str] | None = None) -> None:
                self._send_bytes(status, json.dumps(payload).encode("utf-8"),
                                 "application/json", headers)

            def _send_bytes(self, status: int, data: bytes, content_type: str,
                            headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", content_type)
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

        return Handler


def scripted_client(server: ScriptedServer, **kw: Any) -> Any:
    """The real `OpenAIChat` client pointed at `server`, retrying without long backoffs."""
    from visprog.planning.llm import OpenAIChat

    kw.setdefault("backoff", 0.01)
    return OpenAIChat(model="test-model", base_url=server.url, api_key="test-key", **kw)


def image_parts(message: dict) -> list:
    """The image parts of a chat message the server received."""
    content = message["content"]
    return [] if isinstance(content, str) else [p for p in content if p["type"] == "image_url"]


def text_of(message: dict) -> str:
    """The text of a chat message the server received (its text parts joined)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] for p in content if p["type"] == "text")
