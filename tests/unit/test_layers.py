"""The layers hold: the library never imports Prefect (nor the tasks and flows above it), and no stage
imports another stage."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIBRARY = sorted(p for p in (REPO / "imgflow").rglob("*.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_importing_every_library_module_imports_no_prefect() -> None:
    modules = [_module(p) for p in LIBRARY]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'tasks', 'flows'))\n"
        "print(len(sys.modules)); print(loaded)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert int(result.stdout.split()[0]) > len(modules)  # it really imported them


def test_no_library_module_imports_prefect_even_lazily() -> None:
    offenders = {
        _module(path): sorted(n for n in _imports(path) if n.split(".")[0] in ("prefect", "prefect_dask", "tasks", "flows"))
        for path in LIBRARY
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_no_stage_imports_another_stage() -> None:
    stages = sorted((REPO / "imgflow" / "stages").glob("*.py"))
    assert len(stages) >= 8  # seven stages and the package
    crossing = {
        _module(path): sorted(n for n in _imports(path) if n.startswith("imgflow.stages"))
        for path in stages
    }
    assert {module: names for module, names in crossing.items() if names} == {}


def test_the_library_is_laid_out_by_concept_in_small_modules() -> None:
    """A newcomer finds a dozen concepts at the top of imgflow/, and no module too long to read."""
    entries = [p for p in (REPO / "imgflow").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 12, sorted(p.name for p in entries)
    modules = [*LIBRARY, *(REPO / "flows").rglob("*.py"), *(REPO / "tasks").rglob("*.py")]
    long = {str(p.relative_to(REPO)): n for p in modules if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
