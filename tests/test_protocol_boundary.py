"""Attacks, defences and metrics reach a model only through the estimator protocol.

DESIGN.md: no module under ``attacks/``, ``defenses/`` or ``metrics/`` touches
``estimator.model``, a private estimator member, or an estimator's counters. This test reads
their source (the AST, so comments and docstrings do not count) and lists every violation.
The complementary runtime proof is ``tests/test_external_estimator.py``: an estimator with no
torch module behind it, attacked by every attack its capabilities allow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bastion

SRC = Path(bastion.__file__).parent
SCANNED = ("attacks", "defenses", "metrics")
COUNTERS = {"query_count", "gradient_count", "reset_counts"}


def _estimator_private_names() -> set[str]:
    """Every private method and attribute defined by the estimator classes."""
    names: set[str] = set()
    for path in (SRC / "estimators").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(
                "_"
            ):
                names.add(node.name)
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and node.attr.startswith("_")
            ):
                names.add(node.attr)
    return {n for n in names if not (n.startswith("__") and n.endswith("__"))}


def _is_own(node: ast.expr) -> bool:
    """``self.x``, ``cls.x``, ``super().x``: the class's own members."""
    if isinstance(node, ast.Name):
        return node.id in {"self", "cls"}
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"
    )


def _violations() -> list[str]:
    private = _estimator_private_names()
    found = []
    for package in SCANNED:
        for path in sorted((SRC / package).rglob("*.py")):
            rel = path.relative_to(SRC)
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Attribute):
                    continue
                where = f"{rel}:{node.lineno}"
                if node.attr in COUNTERS:
                    found.append(f"{where}: reads or writes an estimator counter ({node.attr})")
                elif node.attr == "model" and not _is_own(node.value):
                    found.append(f"{where}: reaches past the protocol (.model)")
                elif node.attr in private and not _is_own(node.value):
                    found.append(f"{where}: uses a private estimator member ({node.attr})")
    return found


def test_no_attack_defence_or_metric_reaches_past_the_estimator_protocol():
    violations = _violations()
    assert not violations, "\n".join(violations)


def test_the_scan_sees_a_violation(tmp_path):
    """The scanner itself: a planted module with each kind of leak is reported."""
    planted = tmp_path / "attacks"
    planted.mkdir()
    (planted / "leaky.py").write_text(
        "def attack(est, x):\n"
        "    net = est.model\n"
        "    est.query_count += 1\n"
        "    return est._predict_probabilities(x)\n"
        "class Fine:\n"
        "    def run(self):\n"
        "        return self._predict_probabilities\n"
    )
    global SRC
    original = SRC
    SRC = tmp_path
    try:
        (tmp_path / "estimators").symlink_to(original / "estimators")
        (tmp_path / "defenses").mkdir()
        (tmp_path / "metrics").mkdir()
        found = _violations()
    finally:
        SRC = original
    assert len(found) == 3, found
    assert any(".model" in v for v in found)
    assert any("counter" in v for v in found)
    assert any("_predict_probabilities" in v for v in found)
