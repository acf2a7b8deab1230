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

With ``--alone``, each budgeted run that raced candidates (``imgflow.training.race``) is followed by each of
its candidates trained alone for the whole training time the race had (the same shards, the same
deadline, a race of one), then validated on the same test split: what the race's choice cost or gained
against knowing the winner in advance, and against each loser.

    python benchmarks/budget.py --datasets fashion-mnist --budgets 15m --no-fixed --alone
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
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

    path = Path(dataset) if dataset.endswith(".toml") else REPO / "datasets" / f"{dataset}.toml"
    if train is None:
        return str(path)
    data = tomllib.loads(path.read_text())
    lines = [f"name = {data.get('name', path.stem)!r}".replace("'", '"'), f'source = "{data["source"]}"']
    if "source" in data and data["source"].startswith("parquet:data/"):
        lines[-1] = f'source = "parquet:{REPO / data["source"].removeprefix("parquet:")}"'
    for section in ("options", "clean", "gate"):
        if section in data:
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml(value)}" for key, value in data[section].items()]
    lines.append("[train]")
    lines += [f"{key} = {_toml(value)}" for key, value in train.items()]
    out = folder / f"{path.stem}-fixed.toml"
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
    race = (summary.get("budget") or {}).get("winner")
    return {"accuracy": summary["metrics"]["accuracy"], "seconds": seconds, "run_seconds": summary["seconds"],
            "within": budget is None or summary["budget"]["within"],
            "chose": f"race won by {race['candidate']}" if race else "; ".join(chosen[:4]), "summary": summary}


def _alone(summary: dict[str, Any], root: Path) -> list[tuple[str, dict[str, Any]]]:
    """Each of a budgeted run's raced candidates trained alone for the race's whole training time on the
    same shards (a race of one: the library's own train and validate stages, in this process), with
    its test accuracy and validation figure."""
    import json

    from imgflow.config import GateConfig, TrainConfig
    from imgflow.stages.train import TRAIN
    from imgflow.stages.validate import VALIDATE
    from imgflow.store.artifacts import ArtifactStore

    store = ArtifactStore(root)
    shards = store.lookup("shard", summary["stages"]["shard"]["key"])
    assert shards is not None, root
    recorded = json.loads((Path(summary["stages"]["train"]["path"]) / "manifest.json").read_text())["config"]
    config = TrainConfig(**{name: tuple(value) if isinstance(value, list) else value for name, value in recorded.items()})
    config = config.replace(deadline=summary["budget"]["training_seconds"])  # keyless: not in the manifest's config
    rows = []
    for candidate in config.race:
        started = time.monotonic()
        trained = TRAIN.run(store, config.replace(race=(candidate,), plan=()), {"shards": shards})
        validated = VALIDATE.run(store, GateConfig(min_accuracy=0.0), {"shards": shards, "model": trained})
        entry = (trained.info.race or [{}])[0]
        figure = next((value for name, value in entry.items() if name.startswith("val_")), float("nan"))
        rows.append((candidate["name"], {"accuracy": validated.info.accuracy, "seconds": time.monotonic() - started,
                                         "run_seconds": trained.info.deadline or 0.0, "within": True,
                                         "chose": f"alone for {config.deadline:.0f} s of training (val {figure:.4f})"}))
        print(f"  {candidate['name']} alone: {validated.info.accuracy:.4f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="fashion-mnist,clipart-images", help="dataset spec names or .toml files, comma-separated")
    parser.add_argument("--budgets", default="2m,5m,15m", help="budgets, comma-separated")
    parser.add_argument("--no-fixed", action="store_true", help="skip the fixed recipe's run")
    parser.add_argument("--plot", help="draw accuracy against seconds into this PNG")
    parser.add_argument("--alone", action="store_true", help="after each race, train each of its candidates alone for the race's time")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="imgflow-budget-"))
    cache = work / "cache"
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for spec in args.datasets.split(","):
        dataset = Path(spec).stem  # a name, or a spec file's
        if not args.no_fixed:
            fixed = _arm(_spec(spec, work, FIXED.get(dataset)), work / f"{dataset}-fixed", cache, None)
            rows.append((dataset, "fixed recipe", fixed))
            print(f"{dataset} fixed recipe: {fixed['accuracy']:.4f} in {fixed['seconds']:.0f} s", flush=True)
        for budget in args.budgets.split(","):
            arm = _arm(_spec(spec, work, None), work / f"{dataset}-{budget}", cache, budget)
            rows.append((dataset, f"--budget {budget}", arm))
            print(f"{dataset} --budget {budget}: {arm['accuracy']:.4f} in {arm['seconds']:.0f} s ({arm['chose']})", flush=True)
            if args.alone and (arm["summary"].get("budget") or {}).get("race"):
                os.environ["IMGFLOW_CACHE"] = str(cache)  # the probe's machine, and the weights, of the runs
                alone = _alone(arm["summary"], work / f"{dataset}-{budget}" / "artifacts")
                rows += [(dataset, f"  {name} alone", row) for name, row in alone]

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
        budgeted = [(r["seconds"] / 60, r["accuracy"]) for d, a, r in rows if d == dataset and a.startswith("--budget")]
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
