"""evaluate(..., ray=...): two local Ray workers give the single-process result, exactly."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from bastion.estimators import TorchClassifier
from bastion.evaluation import evaluate
from bastion.exceptions import InvalidParameterError

# Fixed-budget attacks (PGD is seeded: random start) and a minimum-norm one, so both kinds
# of unit, (chunk, eps) and (chunk, minimum-norm), travel.
SUITE = {
    "name": "tiny",
    "attacks": [
        "FGSM",
        {"name": "PGD", "params": {"max_iter": 5}},
        {"name": "FMN", "params": {"max_iter": 10}},
    ],
}
KW = {"eps": [0.05, 0.15], "suite": SUITE, "random_state": 7, "batch_size": 16}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'bastion[ray]'")
    if ray.is_initialized():  # someone else's instance: leave it running
        yield ray
        return
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


def _without_timings(doc):
    if isinstance(doc, dict):
        return {k: _without_timings(v) for k, v in doc.items() if k != "seconds"}
    if isinstance(doc, list):
        return [_without_timings(v) for v in doc]
    return doc


def test_two_workers_equal_one_process(local_ray, digits_cnn, digits_test):
    x, y = digits_test[0][:40], digits_test[1][:40]  # 3 chunks of up to 16
    q0 = digits_cnn.query_count
    one = evaluate(digits_cnn, x, y, health_checks=False, **KW)
    q1 = digits_cnn.query_count
    two = evaluate(digits_cnn, x, y, health_checks=False, ray="local", **KW)
    q2 = digits_cnn.query_count
    # The attacks ran on the workers: here only the clean and adversarial predictions.
    assert q2 - q1 < (q1 - q0) / 2

    assert two.robust_accuracy == one.robust_accuracy
    assert 0 < one.robust_accuracy[0.15] < one.clean_accuracy  # something to compare
    assert _without_timings(two.to_dict()) == _without_timings(one.to_dict())
    for a, b in zip(one.results, two.results, strict=True):
        np.testing.assert_array_equal(a.robust, b.robust)
        np.testing.assert_array_equal(a.broken_by, b.broken_by)
        np.testing.assert_array_equal(a.linf, b.linf)
        np.testing.assert_array_equal(a.gallery_x_adv, b.gallery_x_adv)
        assert a.seconds.keys() == b.seconds.keys()
    np.testing.assert_array_equal(one.min_distance, two.min_distance)
    assert set(one.results[1].broken_by) - {"", "clean"} <= {"FGSM", "PGD", "FMN"}


def test_ray_session_keeps_a_running_instance(local_ray):
    from bastion.evaluation import ray_session

    with ray_session("local") as ray:
        assert ray is local_ray and ray.is_initialized()
    assert local_ray.is_initialized()  # not started by the session: left running


def test_chunk_seeds():
    """The first chunk gets the seed itself: a one-batch evaluation is unchanged by chunking,
    while more chunks draw other seeds (the result depends on batch_size)."""
    from bastion.evaluation._evaluate import chunk_seed

    assert chunk_seed(7, 0) == 7
    seeds = {chunk_seed(7, k) for k in range(1, 50)}
    assert len(seeds) == 49 and all(0 <= s < 2**31 for s in seeds)
    assert chunk_seed(7, 3) == chunk_seed(7, 3) != chunk_seed(8, 3)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_estimator_travels():
    """A TorchScript model does not pickle: it travels as its torch.jit.save archive."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'bastion[ray]'")
    from bastion.evaluation._ray import dumps

    net = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3)))
    clf = TorchClassifier(net, input_shape=(8,), nb_classes=3, clip_values=(0, 1))
    back = pickle.loads(dumps(clf))
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(back.predict(x), clf.predict(x), rtol=0, atol=0)


def test_bad_ray_argument(digits_cnn, digits_test):
    x, y = digits_test[0][:4], digits_test[1][:4]
    with pytest.raises(InvalidParameterError, match="'ray' parameter of evaluate"):
        evaluate(digits_cnn, x, y, suite="quick", ray=2)


def test_missing_ray_names_the_extra(monkeypatch, digits_cnn, digits_test):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    x, y = digits_test[0][:4], digits_test[1][:4]
    with pytest.raises(ImportError, match=r"pip install 'bastion\[ray\]'"):
        evaluate(digits_cnn, x, y, suite="quick", ray="local")


def test_import_bastion_does_not_import_ray():
    code = "import sys, bastion, bastion.evaluation, bastion.cli; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_checkpoint_on_ray_keeps_units_and_resumes_without_rerunning(
    local_ray, digits_cnn, digits_test, tmp_path
):
    """With checkpoint_dir, each unit a Ray worker returns is written as it arrives; a rerun
    (a unit lost: its file deleted) runs only that unit, and the result is unchanged."""
    x, y = digits_test[0][:40], digits_test[1][:40]
    one = evaluate(digits_cnn, x, y, health_checks=False, **KW)
    first = evaluate(
        digits_cnn, x, y, health_checks=False, ray="local", checkpoint_dir=tmp_path, **KW
    )
    units = sorted(tmp_path.glob("unit-*.pt"))
    assert len(units) == 3 + 3 * 2  # FMN per chunk; FGSM+PGD per chunk and budget
    units[-1].unlink()
    again = evaluate(
        digits_cnn, x, y, health_checks=False, ray="local", checkpoint_dir=tmp_path, **KW
    )
    assert len(list(tmp_path.glob("unit-*.pt"))) == len(units)
    for r in (first, again):
        assert (
            _without_timings(r.to_dict())["results"] == _without_timings(one.to_dict())["results"]
        )
