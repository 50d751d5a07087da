"""A local HTTP prediction endpoint around a model, for testing :class:`RemoteClassifier`.

The server answers ``POST {"inputs": [[...], ...]}`` with ``{"probabilities": [[...], ...]}``
(or labels / logits), on 127.0.0.1 and an ephemeral port, in a daemon thread. Switches make it
misbehave the way real services do (errors, throttling, malformed answers, slowness), and it
records what it received, so that tests can check budgets against the server's own count.

The path of a request may select a misbehaviour too (``/nan``, ``/status/400``, ...): a single
shared server then serves every bad-input row, with no state between them.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

__all__ = ["LocalEndpoint"]


class LocalEndpoint:
    """A prediction service on ``http://127.0.0.1:<port>`` answering with ``predict``.

    Parameters
    ----------
    predict : callable
        ``(N, *input_shape)`` float32 NumPy array -> ``(N, K)`` probabilities (NumPy).
    input_shape : tuple of int
        Shape of one sample (the JSON rows are reshaped to it).
    ssl_context : ssl.SSLContext or None
        Serve HTTPS with this server-side context (its certificate loaded).

    Attributes (switches, settable at any time)
    ----------------------------------------------
    output : {"probabilities", "labels", "logits"}
        What the answers hold (logits: log-probabilities).
    fail_first : int
        Answer ``fail_status`` (500) to this many requests first.
    retry_after : str or None
        A ``Retry-After`` header sent with those failures.
    status, message : int or None, str
        Answer every request with this status and message (a 400 with a reason, a 401 ...).
    delay : float
        Seconds to wait before answering.
    on_request : callable or None
        Called with the decoded body of every request, in the server thread.

    Records: ``requests`` (requests received), ``samples`` (rows received, errors included),
    ``headers`` (those of the last request).
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        input_shape: Any,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.predict = predict
        self.input_shape = tuple(input_shape)
        self.output = "probabilities"
        self.fail_first = 0
        self.fail_status = 500
        self.retry_after: str | None = None
        self.status: int | None = None
        self.message = ""
        self.delay = 0.0
        self.on_request: Callable[[Any], None] | None = None
        self.requests = 0
        self.samples = 0
        self.headers: dict[str, str] = {}
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            # Headers and body go out in separate writes: without this, Nagle's algorithm and
            # the client's delayed ACK hold large answers back by ~40 ms each.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # the http.server API
                endpoint._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        self._scheme = "http" if ssl_context is None else "https"
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https://`` with TLS)."""
        return f"{self._scheme}://127.0.0.1:{self._server.server_address[1]}"

    def reset(self) -> None:
        """Switches back to answering normally, records to zero."""
        with self._lock:
            self.output = "probabilities"
            self.fail_first, self.fail_status, self.retry_after = 0, 500, None
            self.status, self.message, self.delay, self.on_request = None, "", 0.0, None
            self.requests, self.samples, self.headers = 0, 0, {}

    def close(self) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> LocalEndpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ serving

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        raw = req.rfile.read(int(req.headers.get("Content-Length", 0)))
        try:
            body = json.loads(raw)
            rows = np.asarray(body["inputs"], dtype=np.float32)
        except (ValueError, KeyError, TypeError):
            self._send(req, 400, {"error": "the body must be JSON with an 'inputs' array"})
            return
        with self._lock:
            self.requests += 1
            self.samples += len(rows)
            self.headers = dict(req.headers.items())
            failing = self.fail_first > 0
            self.fail_first -= int(failing)
        if self.on_request is not None:
            self.on_request(body)
        if self.delay:
            time.sleep(self.delay)
        mode = urllib.parse.urlsplit(req.path).path.strip("/")
        if failing:
            extra = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            self._send(req, self.fail_status, {"error": "temporarily unavailable"}, extra)
        elif self.status is not None:
            self._send(req, self.status, {"error": self.message})
        elif mode.startswith("status/"):
            self._send(req, int(mode.split("/")[1]), {"error": "the endpoint refused the input"})
        elif mode == "malformed":
            self._send_raw(req, 200, b'{"probabilities": [[0.1, ')
        else:
            self._send(req, 200, self._answer(rows, mode))

    def _answer(self, rows: np.ndarray, mode: str) -> dict[str, Any]:
        x = rows.reshape(len(rows), *self.input_shape)
        probs = np.asarray(self.predict(x), dtype=np.float32)
        output = mode if mode in ("probabilities", "labels", "logits") else self.output
        if mode == "nan":
            probs = np.full_like(probs, np.nan)
        elif mode == "extra-row":
            probs = np.concatenate([probs, probs[:1]])
        elif mode == "label-outside":
            return {"labels": [probs.shape[1] + 3] * len(probs)}
        elif mode == "no-key":
            return {"scores": probs.tolist()}
        if output == "labels":
            return {"labels": probs.argmax(axis=1).tolist()}
        if output == "logits":
            return {"logits": np.log(np.maximum(probs, 1e-30)).tolist()}
        # JSON cannot hold NaN; Python's json writes it as the (non-standard) token NaN, which
        # is what a careless service sends.
        return {"probabilities": probs.tolist()}

    @staticmethod
    def _send(
        req: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        LocalEndpoint._send_raw(req, status, json.dumps(body).encode(), headers)

    @staticmethod
    def _send_raw(
        req: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            req.send_header(key, value)
        req.end_headers()
        req.wfile.write(data)
