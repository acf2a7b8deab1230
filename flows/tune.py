"""The ``tune`` flow: search ``[train]`` settings on the validation split, then train, gate, export and
promote the best configuration like any run (``imgflow.training.search`` has the rules)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from prefect import flow

from flows.params import TuneParams, takes
from flows.pipeline import RunOptions, publish, release, run_pipeline, task_runner, title_run
from imgflow.results import ShardInfo
from imgflow.runtime.lifetime import watch_descendants
from imgflow.training.search import (
    choose,
    finished,
    open_study,
    plot_trials,
    prepare,
    report_markdown,
    resolve_space,
    study_dir,
    study_name,
    trial_config,
    trials_table,
)
from tasks.tune import tune_trial


@flow(name="tune", task_runner=task_runner())
@takes(TuneParams)
def tune(params: TuneParams) -> dict[str, Any]:
    """Search the spec's ``[search]`` space (or ``space``) for ``trials`` trials, each the train stage
    scored on the validation split; then the released configuration (``imgflow.training.search.choose``: the best
    trial's, or the spec's own when no trial beats it by more than the noise) goes through validate, the
    gate, export and promotion on the test split. The parameters are ``flows.params.TuneParams``'s.
    Returns the run summary with a ``tune`` entry."""
    watch_descendants()
    started = time.time()
    run = params.open_run(partitions=False)
    cfg = run.cfg
    searched = resolve_space(cfg.dataset, params.space)
    trials, parallel, seed = params.trials, params.parallel, params.seed
    results = run_pipeline(run, RunOptions(until="shard", title=title_run(f"tune {cfg.dataset.name}"))).results
    shards = results["shard"]
    assert isinstance(shards.info, ShardInfo), shards.stage
    name = study_name(cfg.dataset.name, cfg.train, shards, searched, seed)
    folder = study_dir(run.store.folder, name)  # the local folder (an object-store root's mirror)
    study = open_study(folder, name, seed, cfg.train.epochs)
    prepare(study, searched, cfg.train)
    while len(finished(study)) < trials:
        asked = [study.ask() for _ in range(min(parallel, trials - len(finished(study))))]
        futures = [
            tune_trial.submit(
                str(folder),
                name,
                seed,
                trial._trial_id,
                trial.number,
                {param.name: param.suggest(trial) for param in searched},
                cfg.train,
                shards,
                run.store.uri,
            )
            for trial in asked
        ]
        for trial, future in zip(asked, futures, strict=True):
            outcome = future.result()
            if outcome["state"] == "pruned":
                import optuna

                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, outcome["value"])
    rows = trials_table(study, searched)
    best, released, why = choose(rows, searched, cfg.train, shards.info.splits["val"].records)
    report = report_markdown(name, rows, searched, best, (released, why))
    (folder / "trials.md").write_text(report)
    plot_trials(rows, searched, folder / "trials.png")
    publish(
        f"imgflow-tune-{cfg.dataset.name}",
        report + f"\nPlot: `{folder / 'trials.png'}`\n",
        "tuning: every trial, the best one and the one released",
    )
    # The released configuration through the whole pipeline: its training is the trial's (cached).
    chosen = dataclasses.replace(
        run, cfg=dataclasses.replace(cfg, train=trial_config(cfg.train, {param.name: released[param.name] for param in searched}))
    )
    final = RunOptions(title=f"tune {cfg.dataset.name}")
    summary = release(chosen, final, run_pipeline(chosen, final, given=results).results, started)
    tuned = {
        "study": name,
        "folder": str(folder),
        "trials": rows,
        "best": best,
        "released": {"trial": released["number"], "why": why},
        "report": str(folder / "trials.md"),
        "plot": str(folder / "trials.png"),
    }
    return summary.model_copy(update={"tune": tuned}).as_json()
