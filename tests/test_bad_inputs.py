"""The bad-input table: every public class (and metric function) fed bad data, bad labels,
bad models and bad use, and the edge cases that must work; one test per row, so the count
shows in the test output.

A row passes only with its expected outcome: the bastion error it names (with a fragment of
its message), the warning it names, or a result with the stated property. A raw error from
torch, NumPy or scikit-learn, a result where an error was due, or a silent no-op fails it.
"""

import numpy as np
import pytest

from bastion.attacks.evasion import FGSM
from bastion.exceptions import InputError
from bastion.testing import (
    BadInputCase,
    bad_input_cases,
    bad_input_owners,
    bad_input_table,
    check_bad_inputs,
    raises,
    warns,
    works,
)
from bastion.testing._bad_inputs import KINDS

TABLE = bad_input_table()

#: Rows that fail today in code another change is rewriting (strict: the mark goes as soon as
#: the row passes).
KNOWN_FAILURES: dict[str, str] = {}


def _param(case):
    reason = KNOWN_FAILURES.get(case.id)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in TABLE])
def test_bad_input(case):
    case.run()


def test_the_table_covers_every_public_class():
    owners = bad_input_owners()
    names = {obj.__name__ for obj in owners}
    # Discovered, not listed: the classes the issue names among them.
    assert {
        "FinePruning",
        "DPSGDTrainer",
        "ConfidenceMasking",
        "PostprocessedClassifier",
        "ReverseSigmoid",
        "PatchTrigger",
        "BlendTrigger",
        "TorchClassifier",
        "ExpectationOverTransformation",
        "AutoAttack",
        "NeuralCleanse",
        "LiRA",
        "roc_auc",
        "pdtp",
    } <= names
    covered = {case.owner for case in TABLE}
    missing = [obj.__name__ for obj in owners if obj not in covered]
    assert not missing, f"no bad-input rows for {missing}"
    assert len(TABLE) >= 600
    assert len({case.id for case in TABLE}) == len(TABLE), "row ids must be unique"
    assert {case.kind for case in TABLE} == set(KINDS)
    # Every class gets bad data or labels and an edge case that works, but functionally
    # equivalent extraction, which takes no data (it crafts its queries: its rows are about
    # the victim).
    for obj in owners:
        kinds = {case.kind for case in TABLE if case.owner is obj}
        assert "edge" in kinds, f"{obj.__name__}: no edge case that must work"
        if obj.__name__ != "FunctionallyEquivalentExtraction":
            assert kinds & {"data", "labels"}, f"{obj.__name__}: no bad data"
    assert set(KNOWN_FAILURES) <= {case.id for case in TABLE}


def test_rows_fail_on_raw_errors_silent_results_and_missing_warnings():
    def raw():
        raise ValueError("setting an array element with a sequence")

    def silent():
        return np.zeros(3)

    def row(call, expect):
        return BadInputCase(FGSM, "data", "example", "f()", call, expect)

    with pytest.raises(AssertionError, match="got ValueError"):
        row(raw, raises(InputError, "")).run()
    with pytest.raises(AssertionError, match="returned a ndarray"):
        row(silent, raises(InputError, "")).run()
    with pytest.raises(AssertionError, match="does not say"):
        row(lambda: (_ for _ in ()).throw(InputError("bad")), raises(InputError, "NaN")).run()
    with pytest.raises(AssertionError, match="RuntimeWarning"):
        row(silent, warns(RuntimeWarning, "max_queries")).run()

    def never(out):
        raise AssertionError("not bit-identical")

    with pytest.raises(AssertionError, match="not bit-identical"):
        row(silent, works("x returned", never)).run()


def test_users_run_the_table_on_their_own_classes():
    class MyFGSM(FGSM):
        """A subclass gets the rows of its family."""

    rows = bad_input_cases(MyFGSM)
    assert len(rows) > 30 and all(case.owner is MyFGSM for case in rows)
    assert bad_input_cases(object) == []
    from bastion.defenses.postprocessing import Rounding

    assert check_bad_inputs(Rounding) == len(bad_input_cases(Rounding))
