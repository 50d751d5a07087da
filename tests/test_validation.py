import numpy as np
import pytest
import torch

from bastion._validation import (
    Boolean,
    Interval,
    Options,
    RandomState,
    check_labels,
    check_x,
    validate_params,
)
from bastion.exceptions import BastionError, EstimatorError, InputError, InvalidParameterError


def test_exception_hierarchy():
    assert issubclass(InvalidParameterError, ValueError)
    assert issubclass(InvalidParameterError, TypeError)
    assert issubclass(InputError, ValueError)
    for cls in (InvalidParameterError, InputError, EstimatorError):
        assert issubclass(cls, BastionError)


def test_message_format_names_parameter_allowed_and_value():
    with pytest.raises(InvalidParameterError) as err:
        validate_params("PGD", {"eps": -1}, {"eps": [Interval(float, 0, None)]})
    assert (
        str(err.value) == "The 'eps' parameter of PGD must be a float in [0, inf). Got -1 instead."
    )


def test_several_constraints_are_listed():
    with pytest.raises(InvalidParameterError, match=r"one of \{'inf', 1, 2\} or None\. Got 3"):
        from bastion._validation import NONE

        validate_params("X", {"norm": 3}, {"norm": [Options(["inf", 1, 2]), NONE]})


@pytest.mark.parametrize(
    ("constraint", "good", "bad"),
    [
        (Interval(int, 1, None), [1, 5, np.int64(3)], [0, 1.5, True, "2", None]),
        (Interval(float, 0, 1, closed="left"), [0, 0.5, np.float32(0.9)], [1, -0.1, float("nan")]),
        (Options(["inf", 1, 2]), ["inf", 1, 2, 2.0], [3, True, "2", None]),
        (Boolean(), [True, False, np.bool_(True)], [0, 1, "True", None]),
        (RandomState(), [None, 0, 123, torch.Generator()], [-1, 1.5, "seed", True]),
    ],
)
def test_constraints(constraint, good, bad):
    assert all(constraint.is_satisfied_by(v) for v in good)
    assert not any(constraint.is_satisfied_by(v) for v in bad)


def test_check_x_errors():
    x = torch.rand(3, 1, 4, 4)
    check_x(x, input_shape=(1, 4, 4), clip_values=(0, 1))
    with pytest.raises(InputError, match="shape"):
        check_x(x[:, 0], input_shape=(1, 4, 4), clip_values=None)
    with pytest.raises(InputError, match="empty"):
        check_x(x[:0], input_shape=(1, 4, 4), clip_values=None)
    bad = x.clone()
    bad[1, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        check_x(bad, input_shape=(1, 4, 4), clip_values=None)
    with pytest.raises(InputError, match="outside clip_values"):
        check_x(x * 3, input_shape=(1, 4, 4), clip_values=(0, 1))
    with pytest.raises(InputError, match="floating"):
        check_x(torch.ones(3, 1, 4, 4, dtype=torch.int64), input_shape=None, clip_values=None)


def test_check_labels():
    y = check_labels(torch.tensor([0, 2, 1]), n=3, nb_classes=3)
    assert y.dtype == torch.int64
    one_hot = torch.eye(3)[[2, 0, 1]]
    assert check_labels(one_hot, n=3, nb_classes=3).tolist() == [2, 0, 1]
    with pytest.raises(InputError, match="outside"):
        check_labels(torch.tensor([0, 3, 1]), n=3, nb_classes=3)
    with pytest.raises(InputError, match="outside"):
        check_labels(torch.tensor([0, -1, 1]), n=3, nb_classes=3)
    with pytest.raises(InputError, match="2 labels but x has 3"):
        check_labels(torch.tensor([0, 1]), n=3, nb_classes=3)
    with pytest.raises(InputError, match="integer"):
        check_labels(torch.tensor([0.5, 1.0, 2.0]), n=3, nb_classes=3)
    with pytest.raises(InputError, match="shape"):
        check_labels(torch.zeros(3, 2, 2), n=3, nb_classes=3)


def test_renamed_parameters_keep_working_with_a_deprecation_warning():
    from bastion._params import Parametrized

    class Attack(Parametrized):
        _renamed = {"n_restarts": "num_random_init"}  # noqa: RUF012

        def __init__(self, *, num_random_init: int = 1, eps: float = 0.1) -> None:
            self.num_random_init = num_random_init
            self.eps = eps

    with pytest.warns(DeprecationWarning, match="'n_restarts'.*'num_random_init'"):
        a = Attack(n_restarts=3)
    assert a.num_random_init == 3 and a.get_params() == {"num_random_init": 3, "eps": 0.1}
    with pytest.warns(DeprecationWarning):
        a.set_params(n_restarts=5)
    assert a.num_random_init == 5
    with pytest.raises(InvalidParameterError, match="both"):
        Attack(n_restarts=3, num_random_init=2)
    with pytest.raises(TypeError):
        Attack(restarts=3)  # an unknown name is still an error


def test_glossary_flags_drifting_names():
    from bastion._params import glossary_violations

    bad = ["n_restarts", "lr", "policy_lr", "num_neurons", "init_num_evals", "step_size"]
    assert len(glossary_violations(bad)) >= len(bad)
    good = ["num_random_init", "learning_rate", "nb_queries", "eps_step", "max_iter", "x_init"]
    assert glossary_violations(good) == []
