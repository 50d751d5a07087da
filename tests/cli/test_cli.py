"""Tests of the ``bastion`` command: ``--version``, argument errors and ``bastion demo``."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

from bastion import __version__
from bastion.cli import main
from bastion.cli.demo import _Console, _load_cached, default_cache_dir, model_cache_path
from bastion.zoo import SmallCNN

EPS = (0.1, 0.3)
TINY = ["--epochs", "1", "--n-samples", "20", "--eps", *map(str, EPS), "--max-iter", "5"]
OUTPUT_FILES = ("results.json", "report.md", "gallery.png", "robustness.png")
RESULT_KEYS = {
    "attack",
    "eps",
    "norm",
    "accuracy",
    "mean_perturbation",
    "max_perturbation",
    "seconds",
    "n_samples",
}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One tiny demo that trains (and caches) the model; shared by the tests below."""
    root = tmp_path_factory.mktemp("demo")
    out, cache = root / "out", root / "cache"
    argv = ["demo", *TINY, "--cache-dir", str(cache), "--output", str(out), "--quiet"]
    code = main(argv)
    return code, out, cache


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_demo_exits_0_and_writes_every_output(first_run):
    code, out, _ = first_run
    assert code == 0
    for name in OUTPUT_FILES:
        assert (out / name).stat().st_size > 0, name
    assert (out / "gallery.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_json_schema_and_numbers(first_run):
    _, out, cache = first_run
    payload = _results(out)
    assert set(payload) == {"bastion_version", "created", "dataset", "model", "config", "results"}
    assert payload["bastion_version"] == __version__
    datetime.fromisoformat(payload["created"])
    assert payload["dataset"]["n_evaluated"] == 20
    model = payload["model"]
    assert model["source"] == "trained"
    assert Path(model["cache_file"]).is_file()
    assert Path(model["cache_file"]).parent == cache / "models"
    clean = model["clean_accuracy"]
    assert 0.0 <= clean <= 1.0
    assert payload["config"]["eps"] == list(EPS)
    assert payload["config"]["max_iter"] == 5

    results = payload["results"]
    assert [(r["attack"], r["eps"]) for r in results] == [
        (attack, eps) for eps in EPS for attack in ("FGSM", "PGD")
    ]
    for r in results:
        assert set(r) == RESULT_KEYS
        assert r["norm"] == "inf"
        assert r["n_samples"] == 20
        assert 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 <= r["mean_perturbation"] <= r["max_perturbation"] <= r["eps"] + 1e-6
        assert r["seconds"] >= 0.0
        if r["attack"] == "PGD":
            assert r["accuracy"] <= clean


def test_report_holds_table_links_and_command(first_run):
    _, out, _ = first_run
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| attack | eps | accuracy | mean Linf | max Linf | time s |" in report
    assert "(gallery.png)" in report
    assert "(robustness.png)" in report
    assert f"bastion demo --output {out} --epochs 1 --eps 0.1 0.3 --max-iter 5" in report


def test_second_run_loads_the_cached_model(first_run, tmp_path, capsys):
    _, out, cache = first_run
    cache_file = Path(_results(out)["model"]["cache_file"])
    mtime = cache_file.stat().st_mtime_ns
    capsys.readouterr()

    code = main(["demo", *TINY, "--cache-dir", str(cache), "--output", str(tmp_path)])

    assert code == 0
    stdout = capsys.readouterr().out
    assert "Loaded the trained model from the cache" in stdout
    assert "Training" not in stdout
    assert cache_file.stat().st_mtime_ns == mtime
    second = _results(tmp_path)
    assert second["model"]["source"] == "cache"
    # Same model, seeded PGD: the same numbers (timings aside).
    first = _results(out)
    assert second["model"]["clean_accuracy"] == first["model"]["clean_accuracy"]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in first["results"]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in second["results"]] == strip
    # The table is printed, aligned.
    table = [line for line in stdout.splitlines() if " | " in line]
    assert table[0].split(" | ")[0].strip() == "attack"
    assert len({len(line) for line in table}) == 1
    assert len(table) == 1 + 1 + 2 * len(EPS)  # header, clean row, one row per attack and eps


def test_cache_key_and_location(monkeypatch, tmp_path):
    model = SmallCNN(random_state=0)
    a = model_cache_path(tmp_path, epochs=5, seed=0, model=model)
    assert a.parent == tmp_path / "models"
    assert a.name.startswith("digits28-smallcnn-") and a.suffix == ".pt"
    assert a == model_cache_path(tmp_path, epochs=5, seed=0, model=SmallCNN(random_state=1))
    assert a != model_cache_path(tmp_path, epochs=4, seed=0, model=model)
    assert a != model_cache_path(tmp_path, epochs=5, seed=1, model=model)
    assert a != model_cache_path(tmp_path, epochs=5, seed=0, model=SmallCNN(nb_classes=9))

    monkeypatch.setenv("BASTION_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("BASTION_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "bastion"


def test_unreadable_cache_file_is_ignored_with_a_warning(tmp_path, capsys):
    path = tmp_path / "models" / "digits28-smallcnn-0123456789ab.pt"
    path.parent.mkdir()
    path.write_bytes(b"not a model")
    model = SmallCNN(random_state=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not _load_cached(model, path, _Console(quiet=True))
    assert "unreadable" in capsys.readouterr().err
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bastion {__version__}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--eps", "-0.1"], "argument --eps: must be a number in (0, 1], got '-0.1'"),
        (["demo", "--eps", "0.1", "abc"], "argument --eps: must be a number in (0, 1]"),
        (["demo", "--eps", "2"], "argument --eps: must be a number in (0, 1]"),
        (["demo", "--epochs", "0"], "argument --epochs: must be a positive integer"),
        (["demo", "--max-iter", "1.5"], "argument --max-iter: must be a positive integer"),
        (["demo", "--eps-step", "0"], "argument --eps-step: must be a positive number"),
        (["demo", "--n-samples", "-3"], "argument --n-samples: must be a positive integer"),
        (["demo", "--seed", "-1"], "argument --seed: must be a non-negative integer"),
        (["demo", "--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["no-such-command"], "invalid choice: 'no-such-command'"),
        ([], "usage: bastion"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_failure_is_reported_without_traceback(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert main(["demo", "--output", str(not_a_folder), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bastion demo: error:")
    assert "Traceback" not in err


def test_console_entry_point_runs():
    commands = [[sys.executable, "-m", "bastion.cli", "--version"]]
    script = Path(sys.executable).with_name("bastion")
    if script.is_file():
        commands.append([str(script), "--version"])
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"bastion {__version__}"
