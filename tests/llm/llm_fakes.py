"""FAKE for fault injection only: a small misbehaving OpenAI-style HTTP server on 127.0.0.1.

Each POST to /v1/chat/completions consumes the next scripted action (then ``default``, "ok" unless set, forever):
  ok | 500 | 503 | 429 | hang | drop | nonjson | empty | 404 | 400ctx | 401 | refusal | nologprobs
  wrongly typed 200 answers: numcontent (content 1) | dictcontent | imagecontent (a non-text part) |
  listcontent (a list of text parts, legitimate) | badusage ("lots") | listusage ([1, 2]) | negusage (-10**9)
  huge (an answer of ``huge_chars`` characters, ignoring max_tokens) | echoall (a 500 echoing headers and path)
It never models a real LLM: the real-server tests use llama.cpp and vLLM.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _set_content(value: Any) -> Any:
    def apply(c: dict[str, Any], server: FaultServer) -> None:
        c["choices"][0]["message"]["content"] = value(server) if callable(value) else value

    return apply


def _set_usage(value: Any) -> Any:
    def apply(c: dict[str, Any], server: FaultServer) -> None:
        c["usage"] = value

    return apply


#: 200 answers whose fields have the wrong types (or sizes): each edits a good completion.
_TYPED = {
    "numcontent": _set_content(1),
    "dictcontent": _set_content({"text": "1"}),
    "imagecontent": _set_content([{"type": "image_url", "image_url": {"url": "http://x"}}]),
    "listcontent": _set_content(
        lambda s: [{"type": "text", "text": s.reply[:1]}, {"type": "text", "text": s.reply[1:]}]
    ),
    "huge": _set_content(lambda s: s.reply + "x" * s.huge_chars),
    "badusage": _set_usage({"prompt_tokens": "lots", "completion_tokens": 1}),
    "listusage": _set_usage([1, 2]),
    "negusage": _set_usage({"prompt_tokens": -(10**9), "completion_tokens": -(10**9), "total_tokens": -2 * 10**9}),
}


#: A judge prompt and an API key the tests plant (it must never show in an error, a log or a file).
MSG = [{"role": "user", "content": "Is this about months? Answer 0 or 1."}]
KEY = "sk-test-SECRET-0123456789"
#: The clients a test opened; tests/llm/conftest.py closes them after each test.
OPEN_CLIENTS: list[Any] = []


def open_client(base_url: Any, **kw: Any) -> Any:
    """An OpenAI client of ``base_url`` (a FaultServer, a URL or a fleet's list) with fast backoff and the planted
    key unless told otherwise, closed after the test."""
    from sae_lens_autointerp.llm import get_client

    url = base_url.base_url if isinstance(base_url, FaultServer) else base_url
    kw.setdefault("backoff_initial", 0.01)
    kw.setdefault("backoff_max", 0.05)
    client = get_client("openai:fake-model", base_url=url, **kw)
    OPEN_CLIENTS.append(client)
    return client


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (nothing listens there once this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultServer:
    def __init__(
        self,
        script: list[str] | None = None,
        reply: str = "1",
        delay: float = 0.0,
        hang_s: float = 3.0,
        prompt_tokens: int = 10,
        completion_tokens: int = 2,
        port: int = 0,
        default: str = "ok",
        huge_chars: int = 200_000,
    ) -> None:
        self.script = list(script or [])
        self.default = default  # what every request gets once the script is used up (tests switch it)
        self.huge_chars = huge_chars
        self.reply = reply
        self.delay = delay
        self.hang_s = hang_s
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []  # time.monotonic() at each request's arrival
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []  # each POST's path and query
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

            def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                self._raw(status, json.dumps(obj).encode(), "application/json", headers)

            def _raw(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer._lock:
                    action = outer.script.pop(0) if outer.script else outer.default
                    outer.requests.append(body)
                    outer.times.append(time.monotonic())
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                    outer.paths.append(self.path)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    self._act(action, body)
                finally:
                    with outer._lock:
                        outer.in_flight -= 1

            def _act(self, action: str, body: dict[str, Any]) -> None:
                if outer.delay:
                    time.sleep(outer.delay)
                if action == "ok" or action == "nologprobs":
                    self._json(200, outer.completion(body, logprobs=action == "ok"))
                elif action in ("500", "503"):
                    self._json(int(action), {"error": {"message": "internal error, try again"}})
                elif action == "429":
                    self._json(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0.05"})
                elif action == "hang":
                    outer._stop.wait(outer.hang_s)
                    self.close_connection = True
                elif action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif action == "nonjson":
                    self._raw(200, b"<html>502 bad gateway</html>", "text/html")
                elif action == "empty":
                    self._json(
                        200,
                        {
                            "id": "x",
                            "object": "chat.completion",
                            "model": "fake-model",
                            "choices": [],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1},
                        },
                    )
                elif action == "404":
                    self._json(
                        404,
                        {
                            "error": {
                                "message": f"The model `{body.get('model')}` does not exist",
                                "code": "model_not_found",
                            }
                        },
                    )
                elif action == "400ctx":
                    self._json(
                        400,
                        {
                            "error": {
                                "message": "This model's maximum context length is 2048 tokens. "
                                "However, you requested 5000 tokens."
                            }
                        },
                    )
                elif action == "401":
                    # echoes the key, as a careless proxy might: our errors must redact it
                    self._json(
                        401,
                        {"error": {"message": f"Incorrect API key provided: {self.headers.get('Authorization', '')}"}},
                    )
                elif action == "refusal":
                    c = outer.completion(body, logprobs=False)
                    c["choices"][0]["message"] = {
                        "role": "assistant",
                        "content": None,
                        "refusal": "I can't help with that.",
                    }
                    self._json(200, c)
                elif action == "echoall":
                    # a careless proxy echoing every header and the path: our errors must redact them
                    echo = f"{self.path} {dict(self.headers.items())}"
                    self._json(500, {"error": {"message": f"cannot serve {echo}"}})
                elif action in _TYPED:
                    c = outer.completion(body, logprobs=True)
                    _TYPED[action](c, outer)
                    self._json(200, c)
                else:
                    raise AssertionError(f"unknown action {action}")

        ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def completion(self, body: dict[str, Any], logprobs: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": self.reply},
        }
        if logprobs and body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            top = [{"token": "1", "logprob": -0.1}, {"token": "0", "logprob": -2.4}, {"token": " 1", "logprob": -4.0}]
            choice["logprobs"] = {"content": [{"token": self.reply, "logprob": -0.1, "top_logprobs": top[:k]}]}
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }

    @property
    def count(self) -> int:
        return len(self.requests)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
