"""The conda environment, pyproject.toml and the constraints file describe one environment."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values()
                                      for r in extra]
    return {_name(r) for r in reqs}


def _environment_names() -> set[str]:
    names, in_dependencies = set(), False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if not line.startswith(" "):
            in_dependencies = line.startswith("dependencies:")
            continue
        m = re.match(r"^\s+- (\S.*)$", line)
        if not in_dependencies or not m or m.group(1).endswith(":") or m.group(1).startswith("-e"):
            continue
        names.add(_name(m.group(1)))
    return names - {"python", "pip"}


def test_environment_yml_matches_pyproject():
    assert _environment_names() == _pyproject_names()


def test_constraints_pin_every_dependency_and_cpu_torch():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==")
            pins[_name(name)] = version
    missing = _pyproject_names() - set(pins)
    assert not missing, f"constraints.txt does not pin {sorted(missing)}"
    assert pins["torch"].startswith("2.13.0")
    assert not [n for n in pins if n.startswith("nvidia-")], "a CUDA build crept into constraints"
