"""Privacy metrics: known answers and agreement with scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from bastion.exceptions import InputError
from bastion.metrics.privacy import (
    membership_advantage,
    membership_report,
    plot_roc,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)


@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    member = rng.random(3000) < 0.5
    # Rounded scores: many ties, which the curve must treat as sklearn does.
    scores = np.round(rng.normal(size=3000) + 0.8 * member, 1)
    return scores, member


def test_roc_curve_matches_sklearn(scored):
    scores, member = scored
    fpr, tpr, thr = roc_curve(scores, member)
    f2, t2, th2 = skm.roc_curve(member, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    np.testing.assert_allclose(thr[1:], th2[1:])
    assert thr[0] == np.inf


def test_auc_matches_sklearn_and_mann_whitney(scored):
    scores, member = scored
    assert roc_auc(scores, member) == pytest.approx(skm.roc_auc_score(member, scores), abs=1e-12)
    # Known answers: perfect, reversed, all tied.
    assert roc_auc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert roc_auc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5
    # Tensors work too.
    assert roc_auc(torch.tensor([0.9, 0.8, 0.3, 0.1]), torch.tensor([1, 0, 1, 0])) == 0.75


def test_tpr_at_fpr_is_the_conservative_step_reading():
    # 10 non-members scored 0..9, members above or among them.
    non = np.arange(10.0)
    mem = np.array([20.0, 19.0, 8.5, 7.5, 0.5])
    scores = np.r_[mem, non]
    member = np.r_[np.ones(5, bool), np.zeros(10, bool)]
    # FPR 0: only the two members above every non-member.
    assert tpr_at_fpr(scores, member, fpr=0.0) == pytest.approx(2 / 5)
    # FPR 0.05 < 1/10: still FPR 0 (no interpolation towards the next point).
    assert tpr_at_fpr(scores, member, fpr=0.05) == pytest.approx(2 / 5)
    # FPR 0.1: threshold 8.5 admits one non-member (9) and three members.
    assert tpr_at_fpr(scores, member, fpr=0.1) == pytest.approx(3 / 5)
    # FPR 0.15 reads the same point; FPR 0.2 reaches threshold 7.5.
    assert tpr_at_fpr(scores, member, fpr=0.15) == pytest.approx(3 / 5)
    assert tpr_at_fpr(scores, member, fpr=0.2) == pytest.approx(4 / 5)
    assert tpr_at_fpr(scores, member, fpr=1.0) == 1.0
    out = tpr_at_fpr(scores, member)  # defaults: 0.1 % and 1 %
    assert isinstance(out, np.ndarray) and out.tolist() == [0.4, 0.4]


def test_tpr_at_fpr_agrees_with_a_brute_force_reading(scored):
    scores, member = scored
    f, t, _ = skm.roc_curve(member, scores, drop_intermediate=False)
    for target in (0.0, 0.001, 0.01, 0.1, 0.5):
        expected = t[f <= target].max()
        assert tpr_at_fpr(scores, member, fpr=target) == pytest.approx(expected)


def test_membership_advantage():
    s, m = [0.9, 0.8, 0.3, 0.1], [True, False, True, False]
    assert membership_advantage(s, m) == 0.5
    assert membership_advantage(s, m, threshold=0.85) == 0.5
    assert membership_advantage(s, m, threshold=0.5) == 0.0
    # A perfect and a useless verdict.
    assert membership_advantage([1, 1, 0, 0], [1, 1, 0, 0], threshold=0.5) == 1.0
    assert membership_advantage([1, 1, 1, 1], [1, 1, 0, 0], threshold=0.5) == 0.0


def test_report_puts_the_low_fpr_numbers_first(scored):
    scores, member = scored
    r = membership_report(scores, member)
    assert list(r)[:2] == ["tpr@0.001fpr", "tpr@0.01fpr"]
    assert r["auc"] == pytest.approx(roc_auc(scores, member))
    assert r["nb_members"] + r["nb_non_members"] == len(scores)


def test_bad_inputs():
    with pytest.raises(InputError, match="both members and non-members"):
        roc_auc([0.1, 0.2], [True, True])
    with pytest.raises(InputError, match="entries"):
        roc_auc([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(InputError, match="NaN"):
        roc_auc([np.nan, 0.2], [True, False])
    with pytest.raises(InputError, match="fpr"):
        tpr_at_fpr([0.1, 0.2], [True, False], fpr=2.0)


def test_plot_roc_log_log(scored):
    import matplotlib

    matplotlib.use("Agg")
    scores, member = scored
    ax = plot_roc({"a": scores, "b": -scores}, member)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert len(ax.get_legend().get_texts()) == 2
    import matplotlib.pyplot as plt

    plt.close(ax.figure)
