"""The HTML reports of ``bastion evaluate`` and ``bastion audit`` in headless Chromium: they
render their plots and tables, from a screenshot and the DOM, with no console errors and no
external resource.

Chromium comes from Debian's ``chromium`` package (``.ci/run`` installs it); without it the
tests skip with that reason.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from bastion.cli import main
from bastion.datasets import load_digits
from bastion.zoo import SmallCNN

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium; .ci/run does)",
)
from PIL import Image  # noqa: E402  (Pillow is a dependency)

WIDTH, HEIGHT = 1200, 3000
FLAGS = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars"]
LOGGING = ["--enable-logging=stderr", "--v=0"]
SUITE = "name: tiny\nattacks:\n  - FGSM\n  - name: PGD\n    params: {max_iter: 3}\n"


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHROMIUM), *FLAGS, *LOGGING, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _console_lines(stderr: str) -> list[str]:
    """Chromium logs every console message (errors, uncaught exceptions) as ``CONSOLE``."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    _, (x, y) = load_digits(size=28, random_state=0)
    net = SmallCNN(1, 10, input_size=28, random_state=0).eval()
    torch.jit.save(torch.jit.script(net), root / "net.pt")
    np.savez(root / "test.npz", x=x[:100], y=y[:100])
    (root / "tiny.yaml").write_text(SUITE, encoding="utf-8")
    argv = [
        "evaluate",
        "--model", str(root / "net.pt"),
        "--data", str(root / "test.npz"),
        "--eps", "0.05,0.1,0.2",
        "--suite", str(root / "tiny.yaml"),
        "--limit", "30",
        "--out", str(root / "out"),
        "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    return root / "out" / "index.html"


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_detects_console_errors(tmp_path):
    """The check below would see a page's script error (so its silence means something)."""
    page = tmp_path / "bad.html"
    page.write_text("<p>x</p><script>throw new Error('boom')</script>", encoding="utf-8")
    proc = _chromium("--dump-dom", page.as_uri(), cwd=tmp_path)
    assert any("boom" in line for line in _console_lines(proc.stderr)), proc.stderr[-2000:]


def test_screenshot_renders_the_report(report, tmp_path):
    shot = tmp_path / "report.png"
    proc = _chromium(
        f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", report.as_uri(), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_lines(proc.stderr) == []
    with Image.open(shot) as img:
        assert img.size == (WIDTH, HEIGHT)
        rgb = np.asarray(img.convert("RGB"))
    # Not blank: plots and tables bring many colours, and ink covers a fair share of the page.
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8)
    colours = np.unique(packed | rgb[..., 2])
    assert len(colours) > 500
    ink = (rgb.min(axis=2) < 200).mean()
    assert ink > 0.02
    # Coloured pixels (plot lines, bars, badges) and not only grey text.
    saturated = (rgb.max(axis=2).astype(int) - rgb.min(axis=2)) > 80
    assert saturated.mean() > 0.001


def test_dom_has_plots_tables_and_no_external_resources(report, tmp_path):
    proc = _chromium("--dump-dom", report.as_uri(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_lines(proc.stderr) == []
    dom = proc.stdout
    parser = _Elements()
    parser.feed(dom)
    images = [a for t, a in parser.tags if t == "img"]
    tables = [a for t, a in parser.tags if t == "table"]
    # The curve, per-class bars, norm histograms and the gallery; accuracy, per-class, health,
    # configuration, attacks, versions and timings tables.
    assert len(images) == 4
    assert len(tables) >= 6
    for attrs in images:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,"), src[:60]
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as png:
            assert png.size[0] > 200 and png.size[1] > 200
        assert attrs.get("alt")
    for section in ("accuracy", "per-class", "norms", "gallery", "health", "config", "versions"):
        assert f'id="{section}"' in dom
    for code in ("eps-zero", "monotonic", "gradients"):
        assert code in dom
    assert re.search(r'class="badge (pass|warn|fail)"', dom)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", report.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def audit_report(tmp_path_factory) -> Path:
    """``bastion audit backdoor`` on a small MLP trained on 8x8 digits with a BadNets
    corner trigger on a few samples: its report has plots and tables to render."""
    from bastion.zoo import MLP, train_classifier

    root = tmp_path_factory.mktemp("audit-browser")
    (x, y), _ = load_digits(size=8)
    x, y = x[:600].copy(), y[:600].copy()
    poison = np.flatnonzero(y != 3)[:12]
    x[poison, :, -3:, -3:] = 1.0
    y[poison] = 3
    np.savez(root / "train.npz", x=x, y=y)
    net = train_classifier(
        MLP(64, 10, hidden=(32,), random_state=0), x, y, epochs=5, random_state=0
    )
    torch.save(net.state_dict(), root / "m.pt")
    kwargs = '{"in_features": 64, "nb_classes": 10, "hidden": [32]}'
    argv = [
        "audit", "backdoor",
        "--model", str(root / "m.pt"),
        "--arch", "bastion.zoo:MLP",
        "--arch-kwargs", kwargs,
        "--train", str(root / "train.npz"),
        "--out", str(root / "out"),
        "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    return root / "out" / "index.html"


def test_audit_report_renders(audit_report, tmp_path):
    """The audit's report renders too: a non-blank screenshot, its PNG plots decodable in
    the DOM, its tables present, no console message, nothing fetched from outside."""
    shot = tmp_path / "audit.png"
    proc = _chromium(
        f"--screenshot={shot}", f"--window-size={WIDTH},1600", audit_report.as_uri(), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_lines(proc.stderr) == []
    with Image.open(shot) as img:
        rgb = np.asarray(img.convert("RGB"))
    assert (rgb.min(axis=2) < 200).mean() > 0.02  # ink
    assert ((rgb.max(axis=2).astype(int) - rgb.min(axis=2)) > 80).mean() > 0.001  # colour

    proc = _chromium("--dump-dom", audit_report.as_uri(), cwd=tmp_path)
    assert proc.returncode == 0 and _console_lines(proc.stderr) == []
    parser = _Elements()
    parser.feed(proc.stdout)
    images = [a for t, a in parser.tags if t == "img"]
    assert images and len([t for t, _ in parser.tags if t == "table"]) >= 2
    for attrs in images:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,"), src[:60]
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as png:
            assert png.size[0] > 100 and png.size[1] > 100
    assert "Backdoor poison" in proc.stdout
    page = audit_report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
