"""The Docker image and CI install the same, pinned versions, and the image runs as a user.

(No Docker engine here: the Dockerfile is checked as text; the constraints as pip reads them.)
"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and not version.startswith("="), f"constraints.txt: not a pin: {line}"
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_constraints_pin_every_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for reqs in project["optional-dependencies"].values():
        declared += [r for r in reqs if not r.startswith("atrank-mt")]
    pins = _pins()
    missing = sorted({_name(r) for r in declared} - set(pins))
    assert not missing, f"constraints.txt lacks pins for {missing}"
    assert pins["torch"] == "2.13.0"  # no local label: CI's CPU wheel and PyPI's CUDA one


def test_ci_and_the_image_install_through_the_constraints() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    docker = (ROOT / "Dockerfile").read_text()
    installs = [
        line for line in ci.splitlines() if "pip install" in line and "--upgrade pip" not in line
    ]
    assert installs and all("-c constraints.txt" in line for line in installs)
    pip_lines = [line for line in docker.splitlines() if "pip install" in line]
    assert pip_lines and all("-c constraints.txt" in line for line in pip_lines)


def test_the_image_pins_its_base_and_runs_as_a_user() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    (base,) = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert ":" in base and not base.endswith(":latest"), base
    assert re.search(r":\d+\.\d+\.\d+", base), f"base image not pinned to a release: {base}"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    last_user = max(i for i, line in enumerate(lines) if line.startswith("USER "))
    assert last_user < next(i for i, line in enumerate(lines) if line.startswith("ENTRYPOINT"))
