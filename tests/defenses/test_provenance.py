"""Provenance defence: finds the label-flipping source among five, on known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from bastion.datasets import load_digits
from bastion.defenses.poisoning import DetectionResult
from bastion.defenses.poisoning.provenance import ProvenanceDefense
from bastion.estimators import SklearnClassifier, TorchClassifier
from bastion.exceptions import EstimatorError, InputError, InvalidParameterError
from bastion.metrics import detection_scores
from bastion.testing._capability_view import CapabilityView
from bastion.zoo import MLP

BAD = 3


@pytest.fixture(scope="module")
def sourced():
    """8x8 digits from 5 sources; source 3 relabels its samples (y + 1) % 10. The trusted
    validation set is 150 clean test images."""
    (x, y), (x_te, y_te) = load_digits(size=8, random_state=0)
    x, y = x[:1000], y[:1000].copy()
    sources = np.arange(1000) % 5
    y[sources == BAD] = (y[sources == BAD] + 1) % 10
    return x.reshape(1000, -1), y, sources, x_te[:150].reshape(150, -1), y_te[:150]


def test_flags_the_label_flipping_source_with_sklearn(sourced):
    x, y, sources, x_val, y_val = sourced
    clf = SklearnClassifier(LogisticRegression(max_iter=300).fit(x, y))
    defence = ProvenanceDefense(clf, eps=0.02)
    result = defence.detect(x, y, sources=sources, x_val=x_val, y_val=y_val)
    assert isinstance(result, DetectionResult) and result.method == "ProvenanceDefense"
    assert defence.flagged_sources_ == [BAD]
    assert detection_scores(result, sources == BAD)["f1"] == 1.0
    gain = defence.accuracy_without_[BAD] - defence.accuracy_all_
    assert gain > 0.05  # measured: see the report
    assert all(defence.accuracy_without_[s] - defence.accuracy_all_ <= 0.02 for s in (0, 1, 2, 4))
    np.testing.assert_allclose(result.scores[sources == BAD], gain)
    assert sum(r["size"] for r in result.report.values()) == 1000


def test_torch_model_retrained_from_the_same_start(sourced):
    x, y, sources, x_val, y_val = sourced
    net = MLP(64, 10, hidden=(32,), random_state=0)
    clf = TorchClassifier(net, input_shape=(64,), nb_classes=10)
    before = [p.detach().clone() for p in net.parameters()]
    defence = ProvenanceDefense(
        clf, eps=0.02, fit_params={"epochs": 15, "learning_rate": 1e-2}, random_state=0
    )
    result = defence.detect(
        torch.from_numpy(x), torch.from_numpy(y), sources=sources, x_val=x_val, y_val=y_val
    )
    assert defence.flagged_sources_ == [BAD]
    assert result.is_poison.sum() == 200
    # the estimator given is left untouched
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_train_fn_and_errors(sourced):
    x, y, sources, x_val, y_val = sourced
    calls = []

    def train_fn(xs, ys):
        calls.append(xs.shape[0])
        model = LogisticRegression(max_iter=300).fit(xs.numpy(), ys.numpy())
        return SklearnClassifier(model)

    defence = ProvenanceDefense(train_fn=train_fn, eps=0.02)
    result = defence.detect(x, y, sources=sources, x_val=x_val, y_val=y_val)
    assert calls == [1000, 800, 800, 800, 800, 800]  # all, then without each source
    assert defence.flagged_sources_ == [BAD] and result.n_flagged == 200
    with pytest.raises(InvalidParameterError, match="'eps'"):
        ProvenanceDefense(train_fn=train_fn, eps=1.0).detect(
            x, y, sources=sources, x_val=x_val, y_val=y_val
        )
    with pytest.raises(InputError, match="sources"):
        defence.detect(x, y, x_val=x_val, y_val=y_val)
    with pytest.raises(InputError, match="one id per sample"):
        defence.detect(x, y, sources=sources[:10], x_val=x_val, y_val=y_val)
    with pytest.raises(InputError, match="two sources"):
        defence.detect(x, y, sources=np.zeros(1000), x_val=x_val, y_val=y_val)
    with pytest.raises(InputError, match="estimator or a train_fn"):
        ProvenanceDefense().detect(x, y, sources=sources, x_val=x_val, y_val=y_val)


def test_retrains_clones_through_the_declared_capabilities_only(sourced):
    """An estimator offering only predict, clone and fit (no model) flags the same source;
    without clone it is refused by name."""
    x, y, sources, x_val, y_val = sourced
    x, y, sources = x[:500], y[:500], sources[:500]
    sk = SklearnClassifier(LogisticRegression(max_iter=300).fit(x, y))
    before = sk.model.coef_.copy()
    kwargs = {"sources": sources, "x_val": x_val, "y_val": y_val}
    direct = ProvenanceDefense(sk, eps=0.02).detect(x, y, **kwargs)
    view = CapabilityView(sk, ProvenanceDefense._estimator_requirements)
    seen = ProvenanceDefense(view, eps=0.02)
    np.testing.assert_array_equal(seen.detect(x, y, **kwargs).scores, direct.scores)
    assert seen.flagged_sources_ == [BAD]
    np.testing.assert_array_equal(sk.model.coef_, before)  # clones are trained, not sk
    with pytest.raises(EstimatorError, match="'clone'"):
        ProvenanceDefense(CapabilityView(sk, {"predict", "fit"})).detect(x, y, **kwargs)


def test_bad_inputs_raise_typed_errors(sourced):
    x, y, sources, x_val, y_val = sourced
    x, y, sources = x[:300], y[:300], sources[:300]

    def train_fn(xs, ys):
        return SklearnClassifier(LogisticRegression(max_iter=50).fit(xs.numpy(), ys.numpy()))

    defence = ProvenanceDefense(train_fn=train_fn)
    kwargs = {"sources": sources, "x_val": x_val, "y_val": y_val}
    nan = x.copy()
    nan[0, 0] = np.nan
    for what, (xb, yb) in {
        "NaN in x": (nan, y),
        "x not numeric": (np.full(x.shape, "a"), y),
        "negative label": (x, np.where(np.arange(300) == 0, -1, y)),
        "fractional labels": (x, y + 0.5),
        "labels not numeric": (x, np.array(["a"] * 300)),
        "wrong number of labels": (x, y[:10]),
        "no labels": (x, None),
    }.items():
        with pytest.raises(InputError):
            defence.detect(xb, yb, **kwargs)
            pytest.fail(what)
    with pytest.raises(InputError, match="x_val"):
        defence.detect(x, y, sources=sources, x_val=x_val[:, :3], y_val=y_val)
    with pytest.raises(InputError, match="y_val"):
        defence.detect(x, y, sources=sources, x_val=x_val, y_val=y_val + 10)
    with pytest.raises(EstimatorError, match="train_fn"):
        ProvenanceDefense(train_fn=lambda xs, ys: LogisticRegression()).detect(x, y, **kwargs)
