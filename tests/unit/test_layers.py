"""The layers hold: import-linter's contracts (``pyproject.toml``; ``make lint`` runs them too), no import
cycle among the library's modules, and the library never imports Prefect, even once every module is
loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]
LIBRARY = sorted(p for p in (REPO / "imgflow").rglob("*.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_import_contracts_are_kept() -> None:
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "the library never imports Prefect KEPT" in result.stdout


def test_no_import_cycle_among_the_library_modules() -> None:
    """Every module of imgflow/ can be read with only what it imports below it (lazy imports too: grimp
    sees imports inside functions)."""
    graph = grimp.build_graph("imgflow")
    modules = sorted(graph.modules)
    assert len(modules) > 80
    cycles = {
        (module, other)
        for module in modules
        for other in graph.find_modules_directly_imported_by(module)
        if module < other and graph.chain_exists(importer=other, imported=module)
    }
    assert cycles == set()


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


def test_the_library_is_laid_out_by_concept() -> None:
    """A newcomer finds a dozen concepts at the top of imgflow/."""
    entries = [p for p in (REPO / "imgflow").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 12, sorted(p.name for p in entries)


def test_the_benchmarks_import_nothing_from_the_tests() -> None:
    """Benchmarks are run from a checkout as scripts: what they share with the tests lives in the library
    (``imgflow.data.synthetic``, ``imgflow.runtime.quota``), not in ``tests``."""
    import ast

    found = {}
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        found[path.name] = sorted(name for name in names if name.split(".")[0] == "tests")
    assert len(found) > 10 and {name: names for name, names in found.items() if names} == {}


def test_every_module_of_the_stages_is_in_the_independence_contract() -> None:
    """A helper added to imgflow/stages/ would be imported by stages: it has to be named in the contract
    (and then breaks it), so shared code goes below the stages."""
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (independent,) = [c for c in contracts if c["type"] == "independence" and any(m.startswith("imgflow.stages.") for m in c["modules"])]
    modules = {f"imgflow.stages.{p.stem}" for p in (REPO / "imgflow" / "stages").glob("*.py") if p.stem != "__init__"}
    assert set(independent["modules"]) == modules
