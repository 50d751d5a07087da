#!/usr/bin/env bash
# Create benchmarks/.venv-compare: a venv with bastion (editable) and the libraries that
# benchmarks/bench_evasion.py compares it against (IBM ART 1.20.1, torchattacks 3.5.1,
# Foolbox 3.3.4). It is separate from the project's .venv so that the comparison libraries never
# leak into bastion's tests. git ignores it (`benchmarks/.venv-compare/`).
#
# Usage (from anywhere):  bash benchmarks/setup_compare.sh [python]
#
# - torch is installed as exactly `torch==2.13.0`: on this machine that resolves to the CPU wheel;
#   another spec pulls several GB of CUDA libraries.
# - torchattacks declares torchvision, which is not installable here and which torchattacks 3.5.1
#   never imports: it is installed with --no-deps (its real runtime deps, torch, numpy, scipy,
#   tqdm and requests, are listed in requirements-compare.txt).
# - foolbox 3.3.4 is installed with --no-deps too, with its light deps (eagerpy, GitPython,
#   requests, typing-extensions) from requirements-compare.txt; it does not need torchvision.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${1:-python3}"
VENV="$HERE/.venv-compare"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

"${PIP[@]}" --upgrade pip
"${PIP[@]}" -r "$HERE/requirements-compare.txt"
"${PIP[@]}" --no-deps torchattacks==3.5.1 foolbox==3.3.4
"${PIP[@]}" --no-deps -e "$ROOT"
# Optional, for profiling where an attack spends its time.
"${PIP[@]}" pyinstrument || echo "pyinstrument not installed (optional)"

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

import art  # noqa: F401
import foolbox  # noqa: F401
import torch
import torchattacks  # noqa: F401

import bastion  # noqa: F401

for name in ("torch", "adversarial-robustness-toolbox", "torchattacks", "foolbox", "bastion"):
    print(f"{name:32s} {md.version(name)}")
print("cuda available:", torch.cuda.is_available())
PY
