"""Tests of ``bastion evaluate``: the saved digits CNN in TorchScript, state-dict and ONNX
forms, results.json against the schema and the Python API, every bad input, and resume."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

import bastion.evaluation
from bastion.cli import evaluate as evaluate_cmd
from bastion.cli import main
from bastion.datasets import load_digits
from bastion.evaluation import evaluate, load_data, load_model, results_schema
from bastion.zoo import SmallCNN, train_classifier

EPS = "1/255,0.05,0.1"
EPS_VALUES = [1 / 255, 0.05, 0.1]
LIMIT = 30
# A quick suite made quicker: what the tests need is the plumbing, not a strong attack.
TINY_SUITE = """\
name: tiny
attacks:
  - FGSM
  - name: PGD
    params: {max_iter: 3}
"""
TINY_BLACKBOX = """\
name: tiny-blackbox
attacks:
  - name: SquareAttack
    params: {max_queries: 20}
  - name: HopSkipJump
    params: {max_queries: 60, nb_init_evals: 10, max_nb_evals: 20, init_size: 10}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 1-epoch digits CNN as TorchScript, state dict and (when available) ONNX; the test
    images as .npz; the tiny suites as YAML."""
    root = tmp_path_factory.mktemp("evaluate")
    (x_tr, y_tr), (x_te, y_te) = load_digits(size=28, random_state=0)
    net = SmallCNN(1, 10, input_size=28, random_state=0)
    train_classifier(net, x_tr[:400], y_tr[:400], epochs=1, random_state=0)
    net.eval()
    paths = {
        "script": root / "net.pt",
        "state": root / "weights.pt",
        "onnx": root / "net.onnx",
        "data": root / "test.npz",
        "suite": root / "tiny.yaml",
        "blackbox": root / "blackbox.yaml",
    }
    torch.jit.save(torch.jit.script(net), paths["script"])
    torch.save(net.state_dict(), paths["state"])
    np.savez(paths["data"], x=x_te[:120], y=y_te[:120])
    paths["suite"].write_text(TINY_SUITE, encoding="utf-8")
    paths["blackbox"].write_text(TINY_BLACKBOX, encoding="utf-8")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.zeros(1, 1, 28, 28),),
                str(paths["onnx"]),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
    except ImportError:
        del paths["onnx"]
    return paths


def _argv(files, out, *extra, model="script", suite="suite"):
    return [
        "evaluate",
        "--model",
        str(files[model]),
        "--data",
        str(files["data"]),
        "--eps",
        EPS,
        "--suite",
        str(files[suite]),
        "--limit",
        str(LIMIT),
        "--seed",
        "3",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _load(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def script_run(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("script-out")
    code = main(_argv(files, out))
    return code, out


def _numbers(doc: dict) -> dict:
    """Every number of a results document that does not depend on timing or paths."""
    return {
        "eps": doc["eps"],
        "clean_accuracy": doc["clean_accuracy"],
        "robust_accuracy": doc["robust_accuracy"],
        "samples": {k: v for k, v in doc["samples"].items() if k != "index"},
        "results": [{k: v for k, v in r.items() if k != "seconds"} for r in doc["results"]],
        "health": [(h["code"], h["status"], h["message"]) for h in doc["health"]],
        "curve": doc["curve"],
    }


def test_flags_agree_with_the_loaders():
    assert evaluate_cmd.FLAGS.items() <= bastion.evaluation.FLAGS.items()


def test_torchscript_outputs_schema_and_python_api(files, script_run, capsys):
    code, out = script_run
    assert code == 0
    for name in ("results.json", "index.html", "gallery.npz"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "partial").exists()
    doc = _load(out)
    jsonschema.validate(doc, results_schema())
    assert doc["eps"] == pytest.approx(EPS_VALUES)
    assert len(doc["samples"]["index"]) == LIMIT

    # The Python API on the same data and seed gives the same numbers.
    data = load_data(files["data"], limit=LIMIT, random_state=3)
    model = load_model(files["script"], x=data.x)
    api = evaluate(model, data.x, data.y, eps=EPS_VALUES, suite=files["suite"], random_state=3)
    expected = api.to_dict()
    assert _numbers(doc) == _numbers(expected)
    assert doc["samples"]["index"] == [int(i) for i in data.indices]  # rows of the file
    with np.load(out / "gallery.npz") as g:
        assert g["x"].shape[1:] == (1, 28, 28)
        assert list(g["indices"]) == [int(i) for i in api.gallery_indices]
        for k, r in enumerate(api.results):
            np.testing.assert_array_equal(g[f"x_adv_{k}"], r.gallery_x_adv)


def test_summary_on_stdout(files, tmp_path, capsys):
    assert main(_argv(files, tmp_path, "--no-html")) == 0
    text = capsys.readouterr().out
    assert "robust accuracy @" in text and "verdict:" in text and "health checks" in text
    assert not (tmp_path / "index.html").exists()


def test_state_dict_with_arch_gives_the_same_numbers(files, script_run, tmp_path):
    argv = _argv(files, tmp_path, "--arch", "bastion.zoo:SmallCNN", model="state")
    assert main(argv) == 0
    assert _numbers(_load(tmp_path)) == _numbers(_load(script_run[1]))


def test_ray_gives_the_same_numbers(files, script_run, tmp_path):
    # Two local Ray workers (the attacks sharded by chunks of --batch-size) against one process.
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'bastion[ray]'")
    argv = _argv(files, tmp_path, "--ray", "local", "--batch-size", "16")
    single = tmp_path / "single"
    assert main(_argv(files, single, "--batch-size", "16")) == 0
    assert main(argv) == 0
    assert _numbers(_load(tmp_path)) == _numbers(_load(single))


def test_resume_after_an_interruption_equals_an_uninterrupted_run(
    files, script_run, tmp_path, monkeypatch, capsys
):
    from bastion.evaluation._evaluate import ChunkTask

    real = ChunkTask.run
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(args[4])  # the unit's budget
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ChunkTask, "run", interrupted)
    assert main(_argv(files, tmp_path)) == 130
    assert "--resume" in capsys.readouterr().err
    units = sorted(p.name for p in (tmp_path / "partial").glob("unit-*.pt"))
    assert units == ["unit-0-eps" + float(EPS_VALUES[0]).hex().replace("+", "") + ".pt"]
    assert (tmp_path / "partial" / "state.json").is_file()
    assert not (tmp_path / "results.json").exists()

    monkeypatch.setattr(ChunkTask, "run", real)
    ran = []
    monkeypatch.setattr(
        ChunkTask, "run", lambda self, *a, **k: ran.append(a[4]) or real(self, *a, **k)
    )
    argv = [a for a in _argv(files, tmp_path) if a not in ("--out", str(tmp_path))]
    assert main([*argv, "--resume", str(tmp_path)]) == 0
    assert ran == EPS_VALUES[1:]  # the finished unit is not run again
    assert _numbers(_load(tmp_path)) == _numbers(_load(script_run[1]))
    assert not (tmp_path / "partial").exists()


def test_resume_refuses_another_configuration(files, tmp_path, monkeypatch, capsys):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bastion.evaluation, "evaluate", stop)
    assert main(_argv(files, tmp_path)) == 130
    monkeypatch.undo()
    capsys.readouterr()
    argv = _argv(files, tmp_path, "--resume", str(tmp_path))
    argv[argv.index("--seed") + 1] = "4"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "configuration differs in seed" in err[0]


def test_resume_needs_a_partial_evaluation(files, tmp_path, capsys):
    assert main(_argv(files, tmp_path, "--resume", str(tmp_path))) == 2
    assert "Nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--model", "missing.pt"), "does not exist"),
        (("--data", "missing.npz"), "does not exist"),
        (("--eps", "1/255,big"), "'big' is not a number"),
        (("--eps", "-0.1"), "must be positive"),
        (("--input-shape", "1,8,8"), "1, 8, 8"),
        (("--suite", "no-such-suite"), "suite"),
        (("--clip-values", "1,0"), "LO < HI"),
    ],
)
def test_bad_input_one_line_and_exit_2(files, tmp_path, capsys, change, message):
    flag, value = change
    argv = _argv(files, tmp_path / "out")
    if flag in argv:
        argv[argv.index(flag) + 1] = str(tmp_path / value) if "missing" in value else value
    else:
        argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert message in err[0] and err[0].startswith("bastion evaluate: error:")
    assert "Traceback" not in err[0]


def test_labels_out_of_range(files, tmp_path, capsys):
    with np.load(files["data"]) as d:
        x, y = d["x"], d["y"].copy()
    y[5] = 12
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=x, y=y)
    argv = _argv(files, tmp_path / "out")
    argv[argv.index("--data") + 1] = str(bad)
    argv[argv.index("--limit") + 1] = "120"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Label 12" in err[0] and "outside" in err[0]


def test_model_that_rejects_the_data_shape(files, tmp_path, capsys):
    bad = tmp_path / "small.npz"
    np.savez(bad, x=np.random.default_rng(0).random((20, 1, 8, 8)), y=np.arange(20) % 10)
    argv = _argv(files, tmp_path / "out")
    argv[argv.index("--data") + 1] = str(bad)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not accept" in err[0]


def test_debug_shows_the_traceback(files, tmp_path, capsys):
    argv = _argv(files, tmp_path / "out", "--debug")
    argv[argv.index("--model") + 1] = str(tmp_path / "missing.pt")
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


def test_subprocess_exit_code_and_no_traceback(files, tmp_path):
    argv = _argv(files, tmp_path / "out")
    argv[argv.index("--model") + 1] = str(tmp_path / "missing.pt")
    proc = subprocess.run(
        [sys.executable, "-m", "bastion.cli", *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_onnx_white_box_refused_black_box_works(files, tmp_path, capsys):
    if "onnx" not in files:
        pytest.skip(reason="onnx and onnxruntime are not installed: pip install 'bastion[onnx]'")
    assert main(_argv(files, tmp_path / "wb", model="onnx")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "blackbox" in err[0]

    out = tmp_path / "bb"
    argv = _argv(files, out, model="onnx", suite="blackbox")
    argv[argv.index("--limit") + 1] = "20"
    assert main(argv) == 0
    doc = _load(out)
    jsonschema.validate(doc, results_schema())
    assert doc["suite"] == "tiny-blackbox"
    # HopSkipJump's minimal distances give the curve, also through the budget-by-budget run.
    assert doc["curve"] is not None and doc["samples"]["min_distance"] is not None
    data = load_data(files["data"], limit=20, random_state=3)
    model = load_model(files["onnx"], x=data.x)
    api = evaluate(model, data.x, data.y, eps=EPS_VALUES, suite=files["blackbox"], random_state=3)
    assert _numbers(doc) == _numbers(api.to_dict())
    assert (out / "index.html").is_file()


def test_to_html_is_self_contained_and_escaped(files, tmp_path):
    data = load_data(files["data"], limit=20, random_state=0)
    model = load_model(files["script"], x=data.x)
    result = evaluate(model, data.x, data.y, eps=[0.1], suite=files["suite"], random_state=0)
    result.suite = "<script>alert(1)</script>"
    result.health[0] = dataclasses.replace(result.health[0], message="a & b <i>")
    page = result.to_html(tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a &amp; b &lt;i&gt;" in page
    assert page.count('src="data:image/png;base64,') == 4  # curve, classes, norms, gallery
    assert "http://" not in page and "https://" not in page
