"""Accuracy against time budget: ``imgflow run --budget B`` at several budgets against the dataset's fixed
recipe, side by side in one run, on the same machine.

Each arm is a whole ``imgflow run --json`` in a fresh artifact root and Prefect home (the data stages
run in each, and count against its budget); the machine's speed probe is measured by the first budgeted
run and cached for the others, as it would be on a real machine. The fixed recipe is the dataset's
hand-tuned ``[train]`` settings of before the recipe (``FIXED`` below), or the spec's own ``[train]``.

    apt-get install dataset-fashion-mnist     # as root; and: make clipart
    python benchmarks/budget.py                                  # fashion-mnist and clipart-images, 2m 5m 15m
    python benchmarks/budget.py --datasets fashion-mnist --budgets 2m,5m --plot budget.png
    ../shared/tools/slowbox --cpus 0.4 -- python benchmarks/budget.py --datasets fashion-mnist --budgets 15m --no-fixed

It prints one row per arm (test accuracy, the run's seconds, whether it kept its budget, what the recipe
chose) with the accuracy ratio to the fixed recipe, and draws accuracy against seconds (``--plot``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import timed_json  # noqa: E402 - the benchmarks' shared helper, beside this file

REPO = Path(__file__).resolve().parent.parent
# The hand-tuned [train] sections the recipe replaced (datasets/*.toml before the budget), as specs.
FIXED = {
    "fashion-mnist": {"width": 32, "epochs": 12, "batch_size": 128, "learning_rate": 5e-3, "translate": 0.05, "rotate": 0.0, "zoom": 0.05},
    "clipart-images": {"epochs": 20, "rotate": 0.0},
}


def _spec(dataset: str, folder: Path, train: dict[str, Any] | None) -> str:
    """``dataset``'s spec file, with its ``[train]`` replaced by ``train`` when given (a fixed recipe)."""
    import tomllib

    path = REPO / "datasets" / f"{dataset}.toml"
    if train is None:
        return str(path)
    data = tomllib.loads(path.read_text())
    lines = [f"name = {data.get('name', dataset)!r}".replace("'", '"'), f'source = "{data["source"]}"']
    if "source" in data and data["source"].startswith("parquet:data/"):
        lines[-1] = f'source = "parquet:{REPO / data["source"].removeprefix("parquet:")}"'
    for section in ("options", "clean", "gate"):
        if section in data:
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml(value)}" for key, value in data[section].items()]
    lines.append("[train]")
    lines += [f"{key} = {_toml(value)}" for key, value in train.items()]
    out = folder / f"{dataset}-fixed.toml"
    out.write_text("\n".join(lines) + "\n")
    return str(out)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return repr(value)


def _arm(spec: str, folder: Path, cache: Path, budget: str | None) -> dict[str, Any]:
    (folder / "prefect").mkdir(parents=True)
    env = {**os.environ, "PREFECT_HOME": str(folder / "prefect"), "IMGFLOW_CACHE": str(cache)}
    command = [sys.executable, "-m", "flows.cli", "run", "--dataset", spec, "--artifacts", str(folder / "artifacts"),
               "--min-accuracy", "0", "--json", *(["--budget", budget] if budget else [])]
    seconds, summary = timed_json(command, env, cwd=str(REPO))
    plan = (summary.get("budget") or {}).get("plan") or []
    chosen = [line.split(":")[0] for line in plan[2:] if " = " in line.split(":")[0]]
    return {"accuracy": summary["metrics"]["accuracy"], "seconds": seconds, "run_seconds": summary["seconds"],
            "within": budget is None or summary["budget"]["within"], "chose": "; ".join(chosen[:4])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="fashion-mnist,clipart-images", help="dataset spec names, comma-separated")
    parser.add_argument("--budgets", default="2m,5m,15m", help="budgets, comma-separated")
    parser.add_argument("--no-fixed", action="store_true", help="skip the fixed recipe's run")
    parser.add_argument("--plot", help="draw accuracy against seconds into this PNG")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="imgflow-budget-"))
    cache = work / "cache"
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for dataset in args.datasets.split(","):
        if not args.no_fixed:
            fixed = _arm(_spec(dataset, work, FIXED.get(dataset)), work / f"{dataset}-fixed", cache, None)
            rows.append((dataset, "fixed recipe", fixed))
            print(f"{dataset} fixed recipe: {fixed['accuracy']:.4f} in {fixed['seconds']:.0f} s", flush=True)
        for budget in args.budgets.split(","):
            arm = _arm(_spec(dataset, work, None), work / f"{dataset}-{budget}", cache, budget)
            rows.append((dataset, f"--budget {budget}", arm))
            print(f"{dataset} --budget {budget}: {arm['accuracy']:.4f} in {arm['seconds']:.0f} s", flush=True)

    print()
    print(f"| dataset | arm | test accuracy | vs fixed | command s | run s | kept budget | the recipe chose |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    for dataset, arm, row in rows:
        base = next((r for d, a, r in rows if d == dataset and a == "fixed recipe"), None)
        ratio = f"{row['accuracy'] / base['accuracy']:.3f}x" if base else "-"
        print(f"| {dataset} | {arm} | {row['accuracy']:.4f} | {ratio} | {row['seconds']:.0f} | {row['run_seconds']:.0f} | "
              f"{'yes' if row['within'] else 'no'} | {row['chose']} |")
    if args.plot:
        _plot(rows, Path(args.plot))
        print(f"\nplot: {args.plot}")


def _plot(rows: list[tuple[str, str, dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for dataset in dict.fromkeys(d for d, _, _ in rows):
        budgeted = [(r["seconds"] / 60, r["accuracy"]) for d, a, r in rows if d == dataset and a != "fixed recipe"]
        line = axes.plot(*zip(*budgeted), marker="o", label=f"{dataset}: --budget") if budgeted else None
        for d, a, r in rows:
            if d == dataset and a == "fixed recipe":
                color = line[0].get_color() if line else None
                axes.scatter([r["seconds"] / 60], [r["accuracy"]], marker="x", s=80, color=color, label=f"{dataset}: fixed recipe")
    axes.set_xlabel("whole command, minutes")
    axes.set_ylabel("test accuracy")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
