"""The commands that read and repair what runs left: models, cache, verify, datasets, weights and server."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from flows.cli.render import age_text, rich_console, rich_table
from imgflow.runtime.errors import ConfigError


def models_command(args: argparse.Namespace) -> int:
    from imgflow.registry import promote
    from imgflow.registry import versions as registry
    from tasks.store import store_at

    command = args.models_command or "ls"
    store = store_at(args.artifacts)
    # Reads see the registry in the local folder (pulled first from an object-store root); promote
    # and rollback lock, pull and push it themselves.
    root = store.folder if command in ("promote", "rollback") else store.pull_models(args.name)
    if command == "ls":
        names = [registry.resolve_name(root, args.name)] if args.name else registry.model_names(root)
        console = rich_console()
        if not names:
            console.print(f"no models registered under {Path(root) / 'models'}")
        for name in names:
            champion = registry.champion(root, name)
            table = rich_table("version", "accuracy", "test", "champion before", "int8", "decision", title=f"{name}  (* champion)")
            for column in table.columns[1:4]:
                column.justify = "right"
            for version in registry.versions(root, name):
                card = registry.card(root, name, version)
                metrics, int8 = card["metrics"], (card.get("export") or {}).get("int8") or {}
                mark = "*" if champion and champion["version"] == version else " "
                before = f"{metrics['champion_accuracy']:.4f}" if metrics.get("champion_accuracy") is not None else "-"
                table.add_row(
                    f"{mark} {version}",
                    f"{metrics['accuracy']:.4f}",
                    str(metrics["test_records"]),
                    before,
                    "yes" if int8.get("exported") else "no",
                    "; ".join(card["decision"]["reasons"]),
                )
            console.print(table)
        return 0
    name = registry.resolve_name(store.pull_models(args.name), args.name)
    if command == "show":
        folder = registry.model_dir(root, name) / args.version
        if not (folder / "card.json").is_file():
            raise ConfigError(
                f"model {name} has no version {args.version!r}; versions: {', '.join(registry.versions(root, name)) or 'none'}"
            )
        print((folder / "model_card.md").read_text())
        moves = [m for m in registry.history(root, name) if args.version in (m["version"], m.get("previous"))]
        print("## Champion history\n")
        for move in moves:
            print(f"- {move['promoted_at']} {move.get('previous') or '-'} -> {move['version']} by {move['by']}: {move['reason']}")
        print(f"\nfolder: {folder}" + (f"\nreport: {folder / 'report.html'}" if (folder / "report.html").is_file() else ""))
        return 0
    if command == "promote":
        pointer = promote.promote_version(store, name, args.version, args.reason)
    else:
        pointer = promote.rollback(store, name, args.reason)
    print(f"{name}: champion {pointer['previous'] or '-'} -> {pointer['version']} (accuracy {pointer['accuracy']:.4f}), by {pointer['by']}")
    return 0


def cache_command(args: argparse.Namespace) -> int:
    from imgflow.pipeline import housekeeping
    from tasks.store import store_at

    # An object-store root is listed and pruned in the bucket (the mirror's copies of what goes, too).
    store = store_at(args.artifacts)
    if args.cache_command == "ls":
        found = housekeeping.entries(store)
        table = rich_table("stage", "key", "size", "age", "used by")
        table.columns[2].justify = table.columns[3].justify = "right"
        for entry in found:
            users = [f"{len(entry.runs)} run(s), last {entry.runs[-1]}"] if entry.runs else []
            users += entry.models
            state = "" if entry.complete else "  [incomplete: left by a killed run]"
            table.add_row(
                entry.stage,
                entry.key,
                f"{entry.bytes / 1e6:.1f}MB",
                age_text(time.time() - entry.created),
                f"{', '.join(users) or '-'}{state}",
            )
        console = rich_console()
        console.print(table)
        console.print(f"{len(found)} outputs, {sum(e.bytes for e in found) / 1e6:.1f} MB under {store.uri}")
        return 0
    removed = housekeeping.prune(store, keep_runs=args.keep_runs, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for entry in removed:
        print(f"{verb} {entry.stage}/{entry.key} ({entry.bytes / 1e6:.1f} MB)")
    print(f"{verb} {len(removed)} outputs, {sum(e.bytes for e in removed) / 1e6:.1f} MB")
    return 0


def datasets_command(args: argparse.Namespace) -> int:
    from imgflow.data.recipes import clipart
    from imgflow.runtime import progress

    clipart.ensure_installed(install=not args.no_install)
    shown = {"step": -1}

    def show(done: int, total: int | None, unit: str) -> None:
        step = 10 * done // (total or done or 1)
        if step != shown["step"]:
            shown["step"] = step
            print(f"clipart: {done}/{total} {unit}", flush=True)

    with progress.listening(show):
        summary = clipart.build(Path(args.output), size=args.size, limit=args.limit)
    print(
        f"{summary['drawings']} drawings in {len(summary['classes'])} classes -> {summary['output']} "
        f"({summary['with_text']} with a title or description, {summary['render_failed']} failed to render)"
    )
    print("train on it: imgflow run --dataset clipart")
    return 0


def verify_command(args: argparse.Namespace) -> int:
    """Re-hash the whole store and registry against their manifests and cards: 0 when all is whole, 1
    when anything is damaged (listed, and with --repair set aside so the next run rebuilds it)."""
    from imgflow.pipeline.housekeeping import verify
    from tasks.store import store_at

    started = time.perf_counter()
    checked, damaged = verify(store_at(args.artifacts), repair=args.repair)
    seconds = time.perf_counter() - started
    if args.json:
        print(
            json.dumps(
                {
                    "checked": checked,
                    "seconds": round(seconds, 3),
                    "damaged": [
                        {"what": d.what, "path": str(d.path), "problems": d.problems, "moved_to": str(d.moved_to) if d.moved_to else None}
                        for d in damaged
                    ],
                }
            )
        )
    else:
        for item in damaged:
            print(
                f"DAMAGED {item.what} ({item.path}): {'; '.join(item.problems)}"
                + (f"; moved to {item.moved_to}: the next run rebuilds it" if item.moved_to else "")
            )
        print(
            f"{checked} outputs and model versions checked in {seconds:.1f} s: "
            + (
                f"{len(damaged)} damaged" + ("" if args.repair else " (imgflow verify --repair sets damaged stage outputs aside)")
                if damaged
                else "all match their recorded hashes"
            )
        )
    return 1 if damaged else 0


def weights_command(args: argparse.Namespace) -> int:
    from imgflow.training.convolutions import import_backbone
    from imgflow.training.weights import LITE0, import_efficientnet_lite0

    if args.file == "efficientnet-lite0":
        if args.backbone not in (None, LITE0) or args.output:
            raise ConfigError("imgflow weights import efficientnet-lite0 takes only --from: it writes where the transfer model finds it")
        record = import_efficientnet_lite0(Path(args.source) if args.source else None)
        print(
            f"{record['source']} (sha256 {record['source_sha256'][:12]}): {record['tensors']} tensors mapped, "
            f"{record['counters_skipped']} batch-norm step counters skipped"
        )
        print(
            f"{LITE0} ImageNet weights -> {record['output']} (sha256 {record['weights_sha256'][:12]}); use them with "
            f'[train] model = "transfer", backbone = "{LITE0}", backbone_weights = "imagenet"'
        )
        return 0
    if args.source:
        raise ConfigError("--from is for imgflow weights import efficientnet-lite0; a weights FILE is named in place of it")
    if not (args.backbone and args.output):
        raise ConfigError(f"imgflow weights import {args.file} needs --backbone and --output (or name efficientnet-lite0)")
    found = import_backbone(Path(args.file), args.backbone, Path(args.output))
    for source, target, shape in found["mapped"]:
        print(f"{source} -> {target} {'x'.join(map(str, shape))}")
    if found["left_out"]:
        print(f"left out (not 3x3 convolutions): {', '.join(found['left_out'])}")
    print(
        f"{args.backbone} weights ({len(found['mapped'])} convolutions) -> {found['output']}; use them with "
        f'[train] model = "transfer", backbone = "{args.backbone}", backbone_weights = "{found["output"]}"'
    )
    return 0


def server_command(args: argparse.Namespace) -> int:
    from flows.heartbeats import grace
    from flows.pools import create_pools
    from flows.server import server_state, start_server, stop_server

    home = Path(args.home).resolve()
    if args.server_command == "start":
        server = start_server(home, host=args.host, port=args.port, database=args.database, auth=not args.no_auth, heartbeat=args.heartbeat)
        print(
            f"Prefect server on {server.database} serving {server.api_url.removesuffix('/api')} (UI and API), "
            f"{'basic auth on' if server.auth else 'no auth'}; its log: {home / 'server.log'}"
        )
        print(f"A run silent for {grace(server.heartbeat).total_seconds():.0f} s (heartbeats every {server.heartbeat} s) is marked Crashed")
        for pool in create_pools(server.api_url, server.auth):
            print(f"work pool {pool.name} ({pool.kind}): {pool.outcome}")
        print(f"Point a client or worker at it:  source {home / 'client.env'}")
        print(f"Stop it:  imgflow server stop --home {args.home}")
        return 0
    if args.server_command == "stop":
        print("stopped" if stop_server(home) else f"no server started from {home} was running")
        return 0
    running = server_state(home)
    if running is None:
        print(f"no server started from {home} is running")
        return 3
    print(f"running (pid {running.pid}) on {running.database}: {running.api_url}, {'basic auth on' if running.auth else 'no auth'}")
    return 0


def deploy_command(args: argparse.Namespace) -> int:
    import yaml

    from flows.kubernetes import base_job_template, deployment_variables, problems, render

    if args.deploy_command == "k8s-template":
        print(json.dumps(base_job_template(), indent=2))
        return 0
    variables, parameters = deployment_variables(args.deployment, Path(args.prefect_file))
    manifest = render(variables)
    found = problems(manifest)
    print(yaml.safe_dump(manifest, sort_keys=False), end="")
    if found:
        print(f"imgflow: the Job for {args.deployment} would be refused by the Kubernetes API:", file=sys.stderr)
        for problem in found:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(
        f"imgflow: the Job for {args.deployment} is valid against the Kubernetes API's models (checked offline; "
        f"parameters: {json.dumps(parameters)})",
        file=sys.stderr,
    )
    return 0
