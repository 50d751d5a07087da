"""A model behind an HTTP(S) JSON prediction service: predict-only, every sample budgeted."""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import json
import logging
import math
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import timezone
from typing import Any

import numpy as np
import torch

from bastion._tensor import as_device, resolve_random_state
from bastion._validation import (
    NONE,
    RANDOM_STATE,
    Interval,
    Options,
    Satisfies,
    invalid_parameter,
    validate_params,
)
from bastion.estimators.base import Classifier
from bastion.estimators.pytorch import _check_clip_values, _check_input_shape, _check_nb_classes
from bastion.exceptions import ModelError

__all__ = ["EndpointError", "QueryBudgetError", "RemoteClassifier"]

logger = logging.getLogger(__name__)

#: Characters of a server's error message quoted in an error.
_MESSAGE_CHARS = 300
#: Largest answer read (bytes); a larger one is refused rather than held in memory.
_MAX_ANSWER = 1 << 28


class EndpointError(ModelError):
    """The endpoint refused a request, failed past the retries, or answered something that is
    not a usable prediction. A :class:`~bastion.exceptions.ModelError`, so that an attack
    interrupted by it keeps what it found (``AttackInterruptedError``).

    Attributes
    ----------
    status : int or None
        The HTTP status of the last answer (None when no answer came: connection failure,
        timeout).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class QueryBudgetError(ModelError):
    """Sending a request would exceed the estimator's ``max_queries`` budget: nothing beyond
    it was sent. A :class:`~bastion.exceptions.ModelError`, so that an attack that runs out
    of budget keeps what it found."""


class _Failure(Exception):
    """One failed attempt: whether to retry, whether the server may have received it."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry: bool,
        sent: bool,
        wait: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.retry, self.sent, self.wait = (
            message,
            status,
            retry,
            sent,
            wait,
        )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Following a redirect would send the headers (credentials) to another address and
    # re-send the samples outside the budget's view: a 3xx is reported instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _is_headers(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) and not any(c in k + v for c in "\r\n")
        for k, v in value.items()
    )


def _is_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - now
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _loopback(host: str | None) -> bool:
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RemoteClassifier(Classifier):
    """A classifier served over HTTP(S): each batch is POSTed as JSON, the answer parsed.

    A request carries ``{input_key: [[...], ...]}``, the samples' values as nested lists of
    shape ``(n, *input_shape)``; the JSON answer holds, under ``output_key``, one row of
    probabilities per sample (``output="probabilities"``), one class index per sample
    (``"labels"``: a decision-based, label-only model whose predictions are one-hot rows) or
    one row of scores before the softmax (``"logits"``: the estimator then also has the
    ``logits`` capability). ``encode`` and ``decode`` adapt other formats. Every answer is
    checked: a shape other than ``(n, nb_classes)``, NaN or infinite values, probabilities
    outside [0, 1] or not summing to one, labels outside the classes, a missing key or
    malformed JSON raise :class:`EndpointError` (a :class:`~bastion.exceptions.ModelError`).

    Failures are retried: server errors (5xx), 429 Too Many Requests, connection failures
    and timeouts, up to ``max_retries`` times, after ``backoff * 2**attempt`` seconds (times
    ``1 + jitter * u``, ``u`` uniform from ``random_state``; at most ``max_wait``), or after the
    server's ``Retry-After`` on 429 and 503. A client error (4xx but 429; a redirect) fails at
    once, naming the status and the start of the server's message.

    ``max_queries`` is a hard budget of samples *sent*: the server never receives more. A
    ``predict`` call whose samples do not fit the remaining budget raises
    :class:`QueryBudgetError` before sending anything, and so does a retry that would not fit.
    A failed attempt counts as sent unless it certainly never reached the server (connection
    refused, unknown host, TLS certificate rejected): a 5xx answer or a timeout counts, since
    the server may have computed, logged or billed it. ``queries_used`` counts the samples
    sent, ``query_count`` (as for every estimator) those answered.

    Parameters
    ----------
    url : str
        The ``http://`` or ``https://`` address to POST to. HTTPS certificates are verified
        (give ``ssl_context`` for a private certificate authority); redirects are not followed.
    input_shape : tuple of int
        Shape of one sample.
    nb_classes : int
        Number of classes.
    clip_values : (float, float) or None
        Valid input range.
    output : {"probabilities", "labels", "logits"}, default "probabilities"
        What the endpoint answers.
    batch_size : int, default 64
        Most samples per request (a larger ``predict(batch_size=...)`` is split).
    max_queries : int or None
        Most samples ever sent to the endpoint (None: no limit).
    rate_limit : float or None
        Most requests per second (retries included), as a minimum interval between the
        starts of two requests.
    timeout : float, default 30
        Seconds to wait for a connection and for an answer.
    max_retries : int, default 3
        Retries of a failed request (0: none).
    backoff : float, default 0.5
        Seconds before the first retry; doubled for each further one.
    max_wait : float, default 60
        Longest wait before a retry; a ``Retry-After`` longer than this fails at once.
    jitter : float in [0, 1], default 0
        Random extra fraction of each backoff, drawn from ``random_state``.
    random_state : None, int or torch.Generator
        Seeds the jitter.
    headers : dict of str or None
        Extra HTTP headers (e.g. ``{"Authorization": "Bearer ..."}``). Their values never
        appear in ``repr``, errors or logs.
    input_key : str, default "inputs"
        Key of the samples in the request.
    output_key : str or None
        Key of the answer; None: the name of ``output``.
    encode : callable or None
        ``encode(x)`` -> a JSON-serialisable request body, for a float32 NumPy batch ``x``
        (replaces ``{input_key: x.tolist()}``).
    decode : callable or None
        ``decode(answer)`` -> the per-sample outputs (replaces ``answer[output_key]``).
    ssl_context : ssl.SSLContext or None
        TLS settings for HTTPS (default: the system's trusted certificates, hostnames checked).
    clock, sleep : callable or None
        The monotonic clock and the sleep used by the rate limit and retries
        (``time.monotonic`` and ``time.sleep``; tests inject fakes).
    device : str or torch.device or None
        Where the returned tensors live.

    Attributes
    ----------
    queries_used : int
        Samples sent (or possibly received) so far, retries included.
    queries_remaining : int or None
        ``max_queries - queries_used``, or None without a budget.

    Examples
    --------
    >>> import numpy as np
    >>> from bastion.estimators import RemoteClassifier
    >>> from bastion.testing._endpoint import LocalEndpoint  # a local service to talk to
    >>> service = LocalEndpoint(lambda x: np.tile([0.25, 0.75], (len(x), 1)), input_shape=(4,))
    >>> clf = RemoteClassifier(service.url, input_shape=(4,), nb_classes=2, clip_values=(0, 1),
    ...                        max_queries=10, headers={"Authorization": "Bearer s3cret"})
    >>> clf.predict(np.zeros((2, 4), dtype=np.float32))
    array([[0.25, 0.75],
           [0.25, 0.75]], dtype=float32)
    >>> clf.queries_used, clf.queries_remaining, service.samples
    (2, 8, 2)
    >>> "s3cret" in repr(clf)
    False
    >>> service.close()
    """

    capabilities: frozenset[str] = frozenset({"predict"})

    def __init__(
        self,
        url: str,
        *,
        input_shape: Sequence[int],
        nb_classes: int,
        clip_values: tuple[float, float] | None = None,
        output: str = "probabilities",
        batch_size: int = 64,
        max_queries: int | None = None,
        rate_limit: float | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        jitter: float = 0.0,
        random_state: Any = None,
        headers: Mapping[str, str] | None = None,
        input_key: str = "inputs",
        output_key: str | None = None,
        encode: Callable[[np.ndarray], Any] | None = None,
        decode: Callable[[Any], Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        callable_or_none = [Satisfies(callable, "a callable"), NONE]
        validate_params(
            owner,
            {
                "url": url,
                "output": output,
                "batch_size": batch_size,
                "max_queries": max_queries,
                "rate_limit": rate_limit,
                "timeout": timeout,
                "max_retries": max_retries,
                "backoff": backoff,
                "max_wait": max_wait,
                "jitter": jitter,
                "random_state": random_state,
                "input_key": input_key,
                "output_key": output_key,
                "encode": encode,
                "decode": decode,
                "ssl_context": ssl_context,
                "clock": clock,
                "sleep": sleep,
            },
            {
                "url": [Satisfies(_is_url, "an http:// or https:// URL with a host")],
                "output": [Options(["probabilities", "labels", "logits"])],
                "batch_size": [Interval(int, 1, None)],
                "max_queries": [Interval(int, 1, None), NONE],
                "rate_limit": [Interval(float, 0, None, closed="neither"), NONE],
                "timeout": [Interval(float, 0, 86400, closed="right")],
                "max_retries": [Interval(int, 0, None)],
                "backoff": [Interval(float, 0, None)],
                "max_wait": [Interval(float, 0, 86400)],
                "jitter": [Interval(float, 0, 1)],
                "random_state": RANDOM_STATE,
                "input_key": [Satisfies(lambda v: isinstance(v, str), "a str")],
                "output_key": [Satisfies(lambda v: isinstance(v, str), "a str"), NONE],
                "encode": callable_or_none,
                "decode": callable_or_none,
                "ssl_context": [
                    Satisfies(lambda v: isinstance(v, ssl.SSLContext), "an ssl.SSLContext"),
                    NONE,
                ],
                "clock": callable_or_none,
                "sleep": callable_or_none,
            },
        )
        if headers is not None and not _is_headers(headers):
            # The values are secrets (tokens): the message shows the names only.
            shown = {k: "***" for k in headers} if isinstance(headers, Mapping) else type(headers)
            raise invalid_parameter(
                "headers", owner, "None or a dict of str to str without newlines", shown
            )
        self.url = url
        self.input_shape = _check_input_shape(input_shape, owner)
        self.nb_classes = _check_nb_classes(nb_classes, owner)
        self.clip_values = _check_clip_values(clip_values, owner)
        self.output = output
        self.batch_size = batch_size
        self.max_queries = max_queries
        self.rate_limit = rate_limit
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.jitter = jitter
        self.random_state = random_state
        self.headers = dict(headers or {})
        self.input_key = input_key
        self.output_key = output_key
        self.encode = encode
        self.decode = decode
        self.ssl_context = ssl_context
        self.clock = clock
        self.sleep = sleep
        self.device = as_device(device)
        if output == "logits":
            self.capabilities = frozenset({"predict", "logits"})
        self.queries_used = 0
        self._last_start: float | None = None
        self._generator: torch.Generator | None = None
        self._opener: urllib.request.OpenerDirector | None = None
        host = urllib.parse.urlsplit(url).hostname
        if self.headers and url.startswith("http://") and not _loopback(host):
            warnings.warn(
                f"{owner} sends headers to {host} over plain http://, readable by anyone on "
                "the way; use https:// for credentials.",
                RuntimeWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ public API

    @property
    def labels_only(self) -> bool:
        """Whether the endpoint reveals only labels (``output="labels"``)."""
        return self.output == "labels"

    @property
    def queries_remaining(self) -> int | None:
        """Samples that may still be sent, or None without a budget."""
        return None if self.max_queries is None else self.max_queries - self.queries_used

    def predict(self, x: Any, *, batch_size: int = 256) -> Any:
        """Class probabilities for ``x`` (one-hot rows for a label-only endpoint).

        Raises :class:`QueryBudgetError` before sending anything when ``x`` has more samples
        than the budget has left; requests carry at most ``min(batch_size, self.batch_size)``
        samples.
        """
        return self._budgeted(x, batch_size, self.predict_tensor)

    def logits(self, x: Any, *, batch_size: int = 256) -> Any:
        """Scores before the softmax, as the endpoint answered them (``output="logits"``)."""
        self._require("logits", "logits")
        return self._budgeted(x, batch_size, self.logits_tensor)

    def _budgeted(self, x: Any, batch_size: int, kernel: Callable[..., torch.Tensor]) -> Any:
        t, kind = self._input(x)
        self._check_batch_size(batch_size)
        self._check_budget(int(t.shape[0]), None)
        with torch.no_grad():
            out = self._batched(kernel, t, batch_size)
        return kind.restore(out)

    # ------------------------------------------------------------------ kernels

    def _predict_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        answer = self._query(x)
        if self.output == "labels":
            idx = torch.as_tensor(answer, device=self.device)
            return torch.nn.functional.one_hot(idx, self.nb_classes).to(self.dtype)
        t = torch.as_tensor(answer, device=self.device)
        return torch.softmax(t, dim=1) if self.output == "logits" else t

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self._query(x), device=self.device)

    def _query(self, x: torch.Tensor) -> np.ndarray:
        """The endpoint's checked answers for every row of ``x``, in requests of
        ``batch_size`` samples."""
        n = int(x.shape[0])
        self._check_budget(n, None)
        batch = x.detach().to("cpu", torch.float32).numpy()
        parts = [self._post(batch[i : i + self.batch_size]) for i in range(0, n, self.batch_size)]
        if not parts:
            shape: tuple[int, ...] = (0,) if self.output == "labels" else (0, self.nb_classes)
            return np.zeros(shape, np.int64 if self.output == "labels" else np.float32)
        return np.concatenate(parts)

    # ------------------------------------------------------------------ transport

    def _post(self, batch: np.ndarray) -> np.ndarray:
        """One batch, retried as configured; its checked answer."""
        n = len(batch)
        payload = {self.input_key: batch.tolist()} if self.encode is None else self.encode(batch)
        data = json.dumps(payload, allow_nan=False).encode()
        failure: _Failure | None = None
        for attempt in range(self.max_retries + 1):
            if failure is not None:
                self._sleep(self._retry_wait(attempt - 1, failure))
            self._check_budget(n, failure)
            self.queries_used += n  # charged before sending: never more than the budget
            self._throttle()
            try:
                body = self._attempt(data)
            except _Failure as err:
                if not err.sent:
                    self.queries_used -= n
                failure = err
                logger.info(
                    "%s: attempt %d of %d failed: %s",
                    type(self).__name__,
                    attempt + 1,
                    self.max_retries + 1,
                    err.message,
                )
                if not err.retry:
                    break
                continue
            return self._parse(body, n)
        raise self._error(failure, attempts=attempt + 1)  # type: ignore[arg-type]

    def _attempt(self, data: bytes) -> bytes:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "bastion-RemoteClassifier",
            **self.headers,
        }
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with self._get_opener().open(request, timeout=self.timeout) as response:
                body = _read_bounded(response)
        except urllib.error.HTTPError as err:
            status = int(err.code)
            try:
                text = err.read(4 * _MESSAGE_CHARS).decode("utf-8", "replace")
            except Exception:
                text = ""
            text = _shorten(_server_message(text))
            if status < 400:
                where = err.headers.get("Location", "elsewhere") if err.headers else "elsewhere"
                message = (
                    f"HTTP {status} {err.reason}: the endpoint redirects to {where}; give that "
                    "URL (redirects are not followed, so that headers and samples never go "
                    "where you did not send them)"
                )
                raise _Failure(message, status=status, retry=False, sent=True) from None
            wait = None
            if status in (429, 503) and err.headers is not None:
                wait = _retry_after(err.headers.get("Retry-After"), time.time())
            raise _Failure(
                f"HTTP {status} {err.reason}: {text!r}",
                status=status,
                retry=status == 429 or status >= 500,
                sent=True,
                wait=wait,
            ) from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, ssl.SSLError):
                raise _Failure(
                    f"TLS failed: {reason} (give ssl_context to trust a private certificate "
                    "authority)",
                    retry=False,
                    sent=not isinstance(reason, ssl.SSLCertVerificationError),
                ) from None
            refused = isinstance(reason, (ConnectionRefusedError, socket.gaierror))
            raise _Failure(f"connection failed: {reason}", retry=True, sent=not refused) from None
        except (OSError, http.client.HTTPException) as err:
            # A timeout or a broken connection while the answer was read: the server had the
            # request.
            raise _Failure(f"{type(err).__name__}: {err}", retry=True, sent=True) from None
        if len(body) > _MAX_ANSWER:
            raise _Failure(
                f"the answer is larger than {_MAX_ANSWER} bytes", status=200, retry=False, sent=True
            )
        return body

    def _get_opener(self) -> urllib.request.OpenerDirector:
        if self._opener is None:
            context = self.ssl_context or ssl.create_default_context()
            self._opener = urllib.request.build_opener(
                _NoRedirect(), urllib.request.HTTPSHandler(context=context)
            )
        return self._opener

    def _retry_wait(self, attempt: int, failure: _Failure) -> float:
        if failure.wait is not None:
            if failure.wait > self.max_wait:
                raise self._error(
                    failure,
                    attempts=attempt + 1,
                    note=f"the server asks to wait {failure.wait:g} s (Retry-After), more than "
                    f"max_wait={self.max_wait:g}",
                )
            return failure.wait
        wait = self.backoff * 2.0**attempt
        if self.jitter:
            if self._generator is None:
                self._generator = resolve_random_state(self.random_state)
            wait *= 1.0 + self.jitter * float(torch.rand((), generator=self._generator))
        return min(wait, self.max_wait)

    def _throttle(self) -> None:
        if self.rate_limit is None:
            return
        clock = self.clock or time.monotonic
        now = clock()
        if self._last_start is not None:
            wait = self._last_start + 1.0 / self.rate_limit - now
            if wait > 0:
                self._sleep(wait)
                now = max(clock(), self._last_start + 1.0 / self.rate_limit)
        self._last_start = now

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            (self.sleep or time.sleep)(seconds)

    # ------------------------------------------------------------------ budget and errors

    def _check_budget(self, n: int, failure: _Failure | None) -> None:
        left = self.queries_remaining
        if left is None or n <= left:
            return
        what = f"retrying a request of {n} samples" if failure is not None else f"{n} more samples"
        unsent = "this request was not sent" if failure is not None else "nothing was sent"
        err = QueryBudgetError(
            f"{type(self).__name__}: {what} would exceed the budget max_queries="
            f"{self.max_queries} ({self.queries_used} sent, {left} left); {unsent}."
        )
        if failure is not None:
            raise err from self._error(failure, attempts=None)
        raise err

    def _error(self, failure: _Failure, *, attempts: int | None, note: str = "") -> EndpointError:
        where = f"{type(self).__name__}: the endpoint {self._shown_url()}"
        if failure.retry and attempts is not None and not note:
            message = f"{where} failed {attempts} time(s); the last: {failure.message}."
        else:
            message = f"{where} failed: {failure.message}."
        status = failure.status
        if note:
            message += f" Not retried: {note}."
        elif status is not None and 400 <= status < 500 and status != 429:
            hint = (
                "check the credentials in headers"
                if status in (401, 403)
                else "check url, input_shape, input_key or encode against what it expects"
            )
            message += f" Not retried: the endpoint refused the request ({hint})."
        return EndpointError(message, status=status)

    def _shown_url(self) -> str:
        """The URL without credentials or query values (they may hold secrets)."""
        parts = urllib.parse.urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc += f":{parts.port}"
        if parts.username or parts.password:
            netloc = "***@" + netloc
        query = "?***" if parts.query else ""
        return f"{parts.scheme}://{netloc}{parts.path}{query}"

    # ------------------------------------------------------------------ answers

    def _parse(self, body: bytes, n: int) -> np.ndarray:
        owner, key = type(self).__name__, self.output_key or self.output
        try:
            answer = json.loads(body)
        except ValueError as err:
            raise EndpointError(
                f"{owner}: the endpoint {self._shown_url()} answered invalid JSON ({err}): "
                f"{_shorten(body.decode('utf-8', 'replace'))!r}.",
                status=200,
            ) from None
        if self.decode is not None:
            value = self.decode(answer)
        elif isinstance(answer, dict) and key in answer:
            value = answer[key]
        else:
            keys = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
            raise EndpointError(
                f"{owner}: the endpoint's answer has no {key!r} key (it has: {keys}); set "
                "output_key, or decode for another format.",
                status=200,
            )
        try:
            out = np.asarray(value)
        except ValueError:  # ragged lists
            out = np.asarray(None)
        if out.dtype.kind not in "iuf":
            raise EndpointError(
                f"{owner}: the endpoint answered {key!r} that are not an array of numbers "
                f"(got {_shorten(repr(value))}).",
                status=200,
            )
        if self.output == "labels":
            return self._labels_of(out, n, key)
        scores = torch.as_tensor(out, dtype=self.dtype)
        self._check_scores(scores, n, f"{key!r}")  # shape, dtype, NaN: the shared checks
        if self.output == "probabilities":
            low, high = float(scores.min()), float(scores.max())
            sums = scores.double().sum(dim=1)
            if (
                low < -1e-6
                or high > 1 + 1e-6
                or not bool(torch.allclose(sums, sums.new_ones(n), atol=1e-3))
            ):
                raise EndpointError(
                    f"{owner}: the endpoint answered {key!r} outside [0, 1] or not summing to "
                    f"one (values in [{low:g}, {high:g}]); if it sends scores, use "
                    "output='logits'.",
                    status=200,
                )
        return scores.numpy()

    def _labels_of(self, out: np.ndarray, n: int, key: str) -> np.ndarray:
        owner = type(self).__name__
        if out.shape != (n,):
            raise EndpointError(
                f"{owner}: the endpoint answered {key!r} of shape {out.shape} for {n} samples; "
                f"expected ({n},) class indices.",
                status=200,
            )
        if out.dtype.kind == "f" and not (
            np.all(np.isfinite(out)) and np.all(out == np.round(out))
        ):
            raise EndpointError(
                f"{owner}: the endpoint answered non-integral or NaN {key!r}.", status=200
            )
        labels = out.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.nb_classes):
            raise EndpointError(
                f"{owner}: the endpoint answered {key!r} in [{labels.min()}, {labels.max()}], "
                f"outside the {self.nb_classes} classes [0, {self.nb_classes - 1}].",
                status=200,
            )
        return labels

    # ------------------------------------------------------------------ copies and repr

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_opener"] = None  # holds an SSL context: rebuilt on first use
        return state

    def __repr__(self) -> str:
        parts = [
            f"url={self._shown_url()!r}",
            f"input_shape={self.input_shape}",
            f"nb_classes={self.nb_classes}",
            f"clip_values={self.clip_values}",
            f"output={self.output!r}",
        ]
        if self.max_queries is not None:
            parts.append(f"max_queries={self.max_queries}")
        if self.rate_limit is not None:
            parts.append(f"rate_limit={self.rate_limit}")
        if self.headers:
            parts.append("headers={" + ", ".join(f"{k!r}: '***'" for k in self.headers) + "}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _server_message(text: str) -> str:
    """The message of a JSON error body (``{"error": ...}``, ``{"detail": ...}``, ...), or
    the text itself."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(body, dict):
        for key in ("error", "message", "detail", "msg"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return text.strip()


def _read_bounded(response: Any) -> bytes:
    """The answer's body, read in pieces, up to ``_MAX_ANSWER + 1`` bytes (never one buffer of
    that size: an answer without a Content-Length would allocate it)."""
    parts, size = [], 0
    while size <= _MAX_ANSWER:
        piece = response.read(min(1 << 20, _MAX_ANSWER + 1 - size))
        if not piece:
            break
        parts.append(piece)
        size += len(piece)
    return b"".join(parts)


def _shorten(text: str) -> str:
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "..."
