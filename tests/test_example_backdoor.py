"""The backdoor example tells its story with the issue's numbers: the backdoor works,
activation clustering finds the poison over the whole training set, cleaning removes it."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "backdoor_digits.py"


def test_backdoor_example(capsys):
    main = runpy.run_path(str(EXAMPLE))["main"]
    numbers = main()  # 28x28, 10% of the 1s -> 7
    out = capsys.readouterr().out
    assert "attack success rate" in out and "spectral signatures" in out
    assert numbers["n_poison"] == 14
    assert numbers["attack_success_rate_backdoored"] >= 0.9  # measured 0.913
    assert numbers["clean_accuracy_backdoored"] >= 0.95  # measured 0.960
    assert numbers["detection"]["activation clustering"]["f1"] >= 0.9  # measured 1.0
    assert numbers["detection"]["  + exclusionary reclassification"]["f1"] >= 0.9
    assert numbers["proposed_sources"] == {7: 1}
    assert numbers["attack_success_rate_cleaned"] < 0.1  # measured 0.0
    assert numbers["clean_accuracy_cleaned"] >= numbers["clean_accuracy_backdoored"] - 0.05
