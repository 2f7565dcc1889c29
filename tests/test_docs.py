"""The README's architecture section names the tree as it is."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _architecture_paths() -> list[str]:
    """Every file or folder the README's architecture tree names, as a path from the root."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Architecture", 1)[1].split("```", 2)[1]
    stack: list[tuple[int, str]] = []  # (indent, folder) of the enclosing folders
    paths = []
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        names = line.strip().split("  ")[0].split(", ")  # "train.py, evaluate.py   the runs"
        if indent >= 20 or not all(re.fullmatch(r"[\w./]+", n) for n in names):
            continue  # a continuation line of a description
        while stack and stack[-1][0] >= indent:
            stack.pop()
        for name in names:
            paths.append("/".join([*(f.rstrip("/") for _, f in stack), name.rstrip("/")]))
        if names[-1].endswith("/"):
            stack.append((indent, names[-1]))
    return paths


def test_readme_architecture_names_existing_paths() -> None:
    paths = _architecture_paths()
    assert len(paths) >= 20 and "data_prep/sources/sim" in paths and "src/atrank/build.py" in paths
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"README architecture names paths that do not exist: {missing}"


def test_every_package_folder_is_in_the_readme_architecture() -> None:
    paths = set(_architecture_paths())
    packages = [
        p.parent.relative_to(ROOT).as_posix()
        for base in ("data_prep", "src/atrank")
        for p in (ROOT / base).rglob("__init__.py")
    ]
    assert packages
    assert sorted(p for p in packages if p not in paths) == []


def test_the_model_and_the_metadata_reader_import_no_polars_nor_lightning() -> None:
    import subprocess
    import sys

    code = (
        "import sys, atrank.model, data_prep.meta, data_prep.contract; "
        "print(sorted(m for m in ('polars', 'lightning', 'pytorch_lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys, data_prep.meta; print('torch' in sys.modules, 'polars' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
