"""RemoteClassifier against a local HTTP endpoint serving the digits MLP: answers, budgets,
retries, rate limits, TLS and secrets, and black-box attacks end to end."""

import copy
import logging
import shutil
import socket
import ssl
import subprocess
import time

import numpy as np
import pytest
import torch

from bastion.attacks.evasion import HopSkipJump, SquareAttack
from bastion.attacks.query import AttackInterruptedError
from bastion.estimators import BlackBoxClassifier, RemoteClassifier
from bastion.estimators.remote import EndpointError, QueryBudgetError, _retry_after
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError, ModelError
from bastion.testing._endpoint import LocalEndpoint
from bastion.testing._problems import _trained_torch, torch_problem

SECRET = "Bearer s3cret-t0ken"


def _close(got, want):
    """Equal up to float32 rounding: the server computes per request (batch), and a matrix
    product's rounding may depend on the batch's size."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def _model_predict(x):
    module = _trained_torch(torch.float32).torch_module()
    with torch.no_grad():
        return torch.softmax(module(torch.as_tensor(x)), dim=1).numpy()


@pytest.fixture
def service():
    with LocalEndpoint(_model_predict, (1, 8, 8)) as endpoint:
        yield endpoint


@pytest.fixture
def x():
    return torch_problem(24).x


class Recorder:
    """An injected clock and sleep: time moves only when the estimator sleeps."""

    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def _remote(url, **params):
    return RemoteClassifier(url, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0, 1), **params)


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


# ------------------------------------------------------------------ answers


def test_predictions_equal_the_wrapped_model(service, x):
    clf = _remote(service.url, batch_size=5)
    p = clf.predict(x)
    _close(p, _model_predict(x))  # JSON keeps float32 exactly; only batching rounds
    assert p.dtype == np.float32
    assert service.requests == 5 and service.samples == 24  # ceil(24 / 5) requests
    assert clf.query_count == clf.queries_used == 24
    service.reset()
    clf.predict(x, batch_size=3)  # the smaller of the two batch sizes wins
    assert service.requests == 8
    t = clf.predict(torch.as_tensor(x, dtype=torch.float64))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64


def test_labels_and_logits_outputs(service, x):
    truth = _model_predict(x)
    labels = _remote(f"{service.url}/labels", output="labels")
    onehot = labels.predict(x)
    np.testing.assert_array_equal(onehot.argmax(1), truth.argmax(1))
    assert set(np.unique(onehot)) == {0.0, 1.0} and labels.labels_only
    assert labels.capabilities == frozenset({"predict"})
    logits = _remote(f"{service.url}/logits", output="logits")
    assert "logits" in logits.capabilities and not logits.labels_only
    np.testing.assert_allclose(logits.logits(x), np.log(truth), rtol=1e-6)
    np.testing.assert_allclose(logits.predict(x), truth, atol=1e-6)
    with pytest.raises(EstimatorError, match="logits"):
        _remote(service.url).logits(x)


def test_custom_formats_through_encode_and_decode(service, x):
    seen = []
    service.on_request = seen.append
    clf = _remote(
        f"{service.url}/no-key",  # answers {"scores": ...}
        encode=lambda b: {"inputs": b.tolist(), "model": "v2"},
        decode=lambda answer: answer["scores"],
    )
    _close(clf.predict(x[:3]), _model_predict(x[:3]))
    assert seen[0]["model"] == "v2"
    with pytest.raises(ModelError, match="KeyError"):  # a decode that fails is the model's
        _remote(service.url, decode=lambda a: a["nothing"]).predict(x[:1])


@pytest.mark.parametrize(
    ("path", "params", "match"),
    [
        ("malformed", {}, "invalid JSON"),
        ("extra-row", {}, r"shape \(5, 10\)"),
        ("nan", {}, "NaN"),
        ("no-key", {}, "no 'probabilities' key"),
        ("label-outside", {"output": "labels"}, "outside the 10 classes"),
        ("logits", {"output_key": "logits"}, "not summing to one"),  # scores, not probabilities
    ],
)
def test_malformed_answers_fail_without_retry(service, x, path, params, match):
    clf = _remote(f"{service.url}/{path}", **params)
    with pytest.raises(ModelError, match=match):
        clf.predict(x[:4])
    assert service.requests == 1  # a bad answer is not a transient failure
    assert clf.query_count == 0 and clf.queries_used == 4  # sent, never answered usably


def test_bad_input_is_refused_before_sending(service, x):
    clf = _remote(service.url)
    bad = x[:2].copy()
    bad[0, 0, 0, 0] = np.nan
    for xb in (bad, x[:2] + 2.0, x[:2, :, :4]):
        with pytest.raises(InputError):
            clf.predict(xb)
    assert service.requests == 0


# ------------------------------------------------------------------ budget


def test_budget_is_never_exceeded(service, x):
    clf = _remote(service.url, max_queries=10, batch_size=3)
    clf.predict(x[:4])
    with pytest.raises(
        QueryBudgetError, match=r"7 more samples .* max_queries=10 \(4 sent, 6 left"
    ):
        clf.predict(x[:7])  # all or nothing: nothing of it is sent
    assert service.samples == 4 and clf.queries_remaining == 6
    clf.predict(x[:6])
    assert clf.queries_used == clf.query_count == service.samples == 10
    assert clf.queries_remaining == 0
    with pytest.raises(QueryBudgetError):
        clf.predict(x[:1])
    with pytest.raises(QueryBudgetError):  # the kernel attacks call checks it too
        clf.predict_tensor(torch.as_tensor(x[:1]))
    assert service.samples == 10
    clf.reset_counts()  # resets query_count, never the budget
    assert clf.query_count == 0 and clf.queries_used == 10


def test_retries_of_answered_failures_count_toward_the_budget(service, x):
    """A 5xx reached the server: its samples count. The third attempt would take the server
    to 12 samples of a budget of 10: it is not sent."""
    service.fail_first = 5
    rec = Recorder()
    clf = _remote(service.url, max_queries=10, max_retries=5, sleep=rec.sleep, backoff=0.1)
    with pytest.raises(QueryBudgetError, match="retrying a request of 4 samples") as info:
        clf.predict(x[:4])
    assert isinstance(info.value.__cause__, EndpointError) and info.value.__cause__.status == 500
    assert service.samples == clf.queries_used == 8 and clf.query_count == 0
    assert rec.sleeps == [0.1, 0.2]


def test_unreached_server_is_not_charged(x):
    rec = Recorder()
    clf = _remote(_closed_port(), max_queries=4, max_retries=2, backoff=0.5, sleep=rec.sleep)
    with pytest.raises(EndpointError, match=r"failed 3 time.*connection") as info:
        clf.predict(x[:4])
    assert info.value.status is None
    assert clf.queries_used == 0 and rec.sleeps == [0.5, 1.0]


def test_an_attack_stopped_by_the_budget_keeps_what_it_found(service, x):
    clf = _remote(service.url, max_queries=25)
    attack = SquareAttack(clf, eps=0.1, max_queries=100, random_state=0)
    with pytest.raises(AttackInterruptedError) as info:
        attack.generate(x[:4], torch_problem(24).y[:4])
    assert isinstance(info.value, ModelError)
    assert isinstance(info.value.__cause__, QueryBudgetError)
    assert service.samples <= 25 and service.samples == clf.queries_used
    partial = info.value.partial_result
    assert partial is not None and partial.x_adv.shape == x[:4].shape
    assert int(partial.queries.sum()) == clf.query_count


# ------------------------------------------------------------------ retries


def test_retries_on_5xx_then_success(service, x):
    service.fail_first = 2
    rec = Recorder()
    clf = _remote(service.url, backoff=0.1, sleep=rec.sleep)
    _close(clf.predict(x[:5]), _model_predict(x[:5]))
    assert service.requests == 3 and rec.sleeps == [0.1, 0.2]
    assert clf.query_count == 5 and clf.queries_used == 15  # the server saw every attempt


def test_retries_give_up_after_max_retries(service, x):
    service.fail_first = 10
    rec = Recorder()
    clf = _remote(service.url, backoff=1.0, max_retries=3, max_wait=3.0, sleep=rec.sleep)
    with pytest.raises(EndpointError, match=r"failed 4 time.*HTTP 500") as info:
        clf.predict(x[:2])
    assert info.value.status == 500 and service.requests == 4
    assert rec.sleeps == [1.0, 2.0, 3.0]  # 4.0 capped at max_wait


def test_jitter_is_seeded(service, x):
    def sleeps(seed):
        service.reset()
        service.fail_first = 3
        rec = Recorder()
        clf = _remote(service.url, backoff=0.1, jitter=0.5, random_state=seed, sleep=rec.sleep)
        clf.predict(x[:1])
        return rec.sleeps

    first = sleeps(0)
    assert first == sleeps(0) and first != sleeps(1)
    for got, base in zip(first, [0.1, 0.2, 0.4], strict=True):
        assert base <= got <= 1.5 * base


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(service, x, status):
    service.fail_first, service.fail_status, service.retry_after = 1, status, "2"
    rec = Recorder()
    clf = _remote(service.url, backoff=0.1, sleep=rec.sleep)
    clf.predict(x[:2])
    assert rec.sleeps == [2.0] and service.requests == 2


def test_a_retry_after_beyond_max_wait_fails_at_once(service, x):
    service.fail_first, service.fail_status, service.retry_after = 1, 429, "3600"
    rec = Recorder()
    clf = _remote(service.url, sleep=rec.sleep, max_wait=60.0)
    with pytest.raises(EndpointError, match="wait 3600 s") as info:
        clf.predict(x[:2])
    assert info.value.status == 429 and rec.sleeps == [] and service.requests == 1


def test_retry_after_as_an_http_date():
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == pytest.approx(10.0)
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490.0) == 0.0  # in the past
    assert _retry_after(" 7 ", 0.0) == 7.0
    assert _retry_after("soon", 0.0) is None and _retry_after(None, 0.0) is None


@pytest.mark.parametrize(("status", "hint"), [(400, "input_shape"), (401, "credentials")])
def test_a_client_error_fails_at_once_with_the_servers_message(service, x, status, hint):
    service.status = status
    service.message = "expected 64 features, got 63; " + "x" * 5000
    clf = _remote(service.url, headers={"Authorization": SECRET})
    with pytest.raises(EndpointError, match=f"HTTP {status}.*expected 64 features") as info:
        clf.predict(x[:2])
    message = str(info.value)
    assert info.value.status == status and service.requests == 1
    assert hint in message and len(message) < 800  # the server's message is truncated
    assert "s3cret" not in message


def test_a_redirect_is_not_followed(service, x):
    clf = _remote(f"{service.url}/status/307")
    with pytest.raises(EndpointError, match="redirect") as info:
        clf.predict(x[:1])
    assert info.value.status == 307 and service.requests == 1


def test_a_timeout_is_retried_and_counted(service, x):
    service.delay = 1.0
    clf = _remote(service.url, timeout=0.2, max_retries=1, backoff=0.0)
    start = time.monotonic()
    with pytest.raises(EndpointError, match=r"failed 2 time.*timed out"):
        clf.predict(x[:3])
    assert time.monotonic() - start < 1.5
    # The server received both attempts (it may have computed and billed them).
    assert clf.queries_used == 6 and clf.query_count == 0
    deadline = time.monotonic() + 2
    while service.samples < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.samples == 6


# ------------------------------------------------------------------ rate limit


def test_rate_limit_with_an_injected_clock(service, x):
    rec = Recorder()
    times = []
    service.on_request = lambda body: times.append(rec.now)
    clf = _remote(service.url, rate_limit=4.0, batch_size=1, clock=rec.clock, sleep=rec.sleep)
    clf.predict(x[:5])
    np.testing.assert_allclose(np.diff(times), 0.25)  # exactly the minimum interval
    assert times[-1] - times[0] == pytest.approx(1.0)
    rec.now += 10.0  # idle time is not banked: the next request waits for nobody...
    clf.predict(x[:1])
    assert times[-1] == rec.now and len(rec.sleeps) == 4
    service.fail_first = 1  # ...and a retry is throttled like any request
    clf.predict(x[:1])
    assert times[-1] - times[-2] >= 0.25


def test_rate_limit_measured(service, x):
    clf = _remote(service.url, rate_limit=20.0, batch_size=1)
    start = time.monotonic()
    clf.predict(x[:5])
    assert time.monotonic() - start >= 4 / 20 - 1e-3
    assert service.requests == 5


# ------------------------------------------------------------------ security


def test_secrets_never_shown(service, x, caplog):
    url = f"{service.url}/probabilities?api_key=k3y"
    clf = _remote(url, headers={"Authorization": SECRET}, max_retries=2, backoff=0.0)
    assert "s3cret" not in repr(clf) and "k3y" not in repr(clf)
    assert "'Authorization': '***'" in repr(clf)
    service.fail_first = 5
    with caplog.at_level(logging.DEBUG, logger="bastion"), pytest.raises(EndpointError) as info:
        clf.predict(x[:1])
    assert caplog.records, "retries are logged"
    assert "s3cret" not in caplog.text and "k3y" not in caplog.text
    assert "s3cret" not in str(info.value) and "k3y" not in str(info.value)
    assert service.headers["Authorization"] == SECRET  # sent all the same


def test_a_bad_header_is_refused_without_showing_its_value():
    with pytest.raises(InvalidParameterError, match="headers") as info:
        _remote("https://example.org/", headers={"Authorization": SECRET + "\r\nX-Evil: 1"})
    assert "s3cret" not in str(info.value) and "'Authorization': '***'" in str(info.value)


def test_the_local_endpoint_frees_its_port(x):
    service = LocalEndpoint(_model_predict, (1, 8, 8))
    clf = _remote(service.url, max_retries=0)
    clf.predict(x[:1])
    service.close()
    service.close()  # idempotent
    with pytest.raises(EndpointError, match="connection"):
        clf.predict(x[:1])
    assert clf.queries_used == 1  # the refused attempt is not charged


def test_credentials_over_plain_http_warn():
    with pytest.warns(RuntimeWarning, match="https"):
        RemoteClassifier(
            "http://example.org/predict",
            input_shape=(2,),
            nb_classes=2,
            headers={"Authorization": SECRET},
        )


def test_deepcopy_after_use(service, x):
    clf = _remote(service.url, max_queries=50)
    clf.predict(x[:2])
    twin = copy.deepcopy(clf)
    np.testing.assert_array_equal(twin.predict(x[:2]), clf.predict(x[:2]))
    assert twin.queries_used == 4 and clf.queries_used == 4  # each copy keeps its own count


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip(reason="needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_is_verified_by_default(certificate, x):
    cert, key = certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    with LocalEndpoint(_model_predict, (1, 8, 8), ssl_context=server_context) as service:
        assert service.url.startswith("https://")
        clf = _remote(service.url, max_retries=3, max_queries=10)
        with pytest.raises(EndpointError, match="certificate") as info:
            clf.predict(x[:2])
        assert "ssl_context" in str(info.value)
        assert clf.queries_used == 0 and service.requests == 0  # not retried, not charged
        trusted = ssl.create_default_context(cafile=str(cert))
        clf = _remote(service.url, ssl_context=trusted)
        _close(clf.predict(x[:2]), _model_predict(x[:2]))


# ------------------------------------------------------------------ attacks end to end


def test_square_attack_through_the_endpoint_equals_the_local_one(service, x):
    """The endpoint returns the model's float32 probabilities exactly, so Square with one
    seed takes the same steps through HTTP as on a local black box."""
    xs, ys = x[:6], torch_problem(24).y[:6]
    remote = _remote(service.url, max_queries=6 * 60)
    local = BlackBoxClassifier(
        _model_predict, input_shape=(1, 8, 8), nb_classes=10, clip_values=(0, 1)
    )
    attack = SquareAttack(remote, eps=0.3, max_queries=60, random_state=0)
    x_adv = attack.generate(xs, ys)
    reference = SquareAttack(local, eps=0.3, max_queries=60, random_state=0)
    np.testing.assert_array_equal(x_adv, reference.generate(xs, ys))
    np.testing.assert_array_equal(attack.queries_, reference.queries_)
    assert np.abs(x_adv - xs).max() <= 0.3 + 1e-6
    assert service.samples == remote.query_count == remote.queries_used == attack.queries_.sum()
    fooled = _model_predict(x_adv).argmax(1) != ys
    np.testing.assert_array_equal(fooled, attack.success_)
    assert fooled.sum() >= 3


def test_hop_skip_jump_on_a_label_only_endpoint(service, x):
    xs, ys = x[:2], torch_problem(24).y[:2]
    clf = _remote(f"{service.url}/labels", output="labels")
    attack = HopSkipJump(clf, max_queries=300, random_state=0)
    x_adv = attack.generate(xs, ys)
    assert attack.queries_.max() <= 300
    assert service.samples == clf.query_count == attack.queries_.sum()
    assert np.all(_model_predict(x_adv).argmax(1) != ys)
    with pytest.raises(EstimatorError, match="labels_only"):  # Square needs scores
        SquareAttack(clf, max_queries=10).generate(xs, ys)
