"""The deployment path as a user types it, against a real `prefect server start` on 127.0.0.1 with
basic auth on: on SQLite (a run, what the UI shows of it in a real browser, a past-dated run, the
automation, the schedule) and on PostgreSQL (``imgflow server start``'s default: a client without
the credentials turned away, a worker killed in the middle of training, a new worker, a rerun that
resumes). Each starts its server and deploys without any hint of where the repository is (deploy
records the folder it runs in).

The browser check drives Debian's Chromium (``apt-get install chromium``; skipped without it) with
Playwright and saves its screenshots in ``IMGFLOW_SCREENSHOTS`` (default: the test's temporary folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.pools import create_pools
from flows.postgres import server_programs
from flows.server import RunningServer, prefect_server, server_state
from imgflow.runtime.errors import UserError
from imgflow.runtime.lifetime import descendants, running
from imgflow.data.synthetic import partitioned_parquet
from tests.conftest import seed_prefect_home

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STAGES = ("download", "clean", "drift", "audit", "shard", "train", "validate", "export")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Deployed:
    """A server with imgflow's deployments on it, and the commands a user would type against it."""

    server: RunningServer
    tmp: Path
    env: dict[str, str]

    def prefect(self, *args: str, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env or self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        assert result.returncode == 0 or not check, f"prefect {' '.join(args)}:\n{result.stdout[-4000:]}"
        return result

    def worker(self, name: str) -> subprocess.Popen:
        with (self.tmp / f"{name}.log").open("w") as log:
            # It asks for scheduled runs every second, not every 10 s: each run would wait for that.
            # With SIGINT's default action: a process started while SIGINT is ignored inherits that (the
            # pytest worker can be left so by an earlier in-process test), and `prefect worker start`
            # stops on a SIGTERM by sending itself SIGINT, which it would then never see.
            return subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "imgflow", "--name", name],
                                    cwd=self.tmp, env={**self.env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_default_sigint)

    def stop(self, worker: subprocess.Popen) -> None:
        worker.terminate()
        worker.wait(timeout=60)

    def summary(self, model: str) -> str:
        """The latest run-summary artifact's markdown, as the UI shows it."""
        shown = self.prefect("artifact", "inspect", f"imgflow-run-{model}", "--output", "json")
        return max(json.loads(shown.stdout), key=lambda version: version["created"])["data"]


def _postgres_missing() -> str:
    try:
        server_programs()
    except UserError as missing:
        return str(missing)
    return ""


@pytest.fixture
def deployed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployed]:
    database = request.param
    if database == "postgres" and _postgres_missing():
        pytest.skip(_postgres_missing())
    # The server's folder is outside pytest's, which only its owner may enter: PostgreSQL, run as
    # `postgres` under root, could not reach a cluster there.
    with tempfile.TemporaryDirectory(prefix="imgflow-server-") as name:
        os.chmod(name, 0o711)
        home = Path(name) / "server"
        if database == "sqlite":
            seed_prefect_home(request.getfixturevalue("prefect_database"), home)
        # Heartbeats every 30 s (Prefect's least): a silent run is crashed 75 s after its last one.
        with prefect_server(home, database=database, auth=True, heartbeat=30) as server:
            base = {key: value for key, value in os.environ.items() if key not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "IMGFLOW_REPO")}
            deployed = Deployed(server, tmp_path, {**base, "PREFECT_HOME": str(tmp_path / "client"), **server.client_env()})
            # as `imgflow server start` does: the process, Docker and Kubernetes pools deploy/prefect.yaml names
            assert {pool.outcome for pool in create_pools(server.api_url, server.auth)} == {"created"}
            listed = deployed.prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml").stdout
            deployments = ("train/retrain", "backfill/backfill", "predict/predict", "tune/tune", "train/retrain-docker", "train/retrain-kubernetes")
            assert all(name in listed for name in deployments), listed
            yield deployed
        assert server_state(home) is None


@pytest.mark.parametrize("deployed", ["sqlite"], indirect=True)
def test_on_sqlite_a_deployment_run_what_the_ui_shows_a_past_dated_run_and_the_schedule(deployed: Deployed) -> None:
    """Slow by nature (about 50 s): real deployment runs, each picked up by a real worker polling the
    server and run in a process of its own, as on a production host."""
    tmp = deployed.tmp
    worker = deployed.worker("worker")
    try:
        artifacts = tmp / "artifacts"
        run = deployed.prefect("deployment", "run", "train/retrain", "--param", "dataset=sample:mnist5k", "--param", "limit=2000",
                               "--param", "epochs=3", "--param", "min_accuracy=0.5", "--param", f"artifacts={artifacts}", "--watch", timeout=600)
        # A retrain scheduled in the past reads a partitioned source up to its own date: a backfill
        # (ingesting is what the date decides: it stops after clean).
        lake = partitioned_parquet(tmp / "lake", ["2024-05-01", "2024-05-02", "2024-05-03"], per_day=150)
        past = deployed.prefect("deployment", "run", "train/retrain", "--param", f"dataset=parquet:{lake}", "--param", "until=clean",
                                "--param", f"artifacts={tmp / 'past'}", "--start-at", "2024-05-02 03:00", "--watch", timeout=600)
    finally:
        deployed.stop(worker)
    assert "Completed" in run.stdout, run.stdout[-3000:] + (tmp / "worker.log").read_text()[-3000:]
    for stage in ("download", "clean", "shard", "train", "validate"):
        assert list((artifacts / stage).glob("*/manifest.json")), stage
    assert (artifacts / "runs.jsonl").is_file()
    assert "Completed" in past.stdout, past.stdout[-3000:]
    logged = json.loads((tmp / "past" / "runs.jsonl").read_text().splitlines()[-1])
    assert logged["partitions"] == {"2024-05-01": "ran", "2024-05-02": "ran"}

    created = deployed.prefect("automation", "create", "--from-file", "deploy/automation-rejected.yaml")
    assert "Created automation 'imgflow model rejected'" in created.stdout
    inspected = deployed.prefect("deployment", "inspect", "train/retrain")
    assert "0 3 * * *" in inspected.stdout and "UTC" in inspected.stdout
    assert f"'directory': '{REPO}'" in inspected.stdout  # where workers run the flows from: the folder deploy ran in

    if not Path(CHROMIUM).is_file():
        pytest.skip("the UI check needs Chromium: apt-get install chromium")
    _check_the_ui(deployed, Path(os.environ.get("IMGFLOW_SCREENSHOTS", tmp / "screenshots")))


def _check_the_ui(deployed: Deployed, screenshots: Path) -> None:
    """Log in to the Prefect UI as a user would and check the first run: its name says what ran and
    what came of it, it is Completed with one task run per stage, and the run-summary, data-quality
    and validation artifacts and the promotion event show their numbers."""
    from playwright.sync_api import expect, sync_playwright

    screenshots.mkdir(parents=True, exist_ok=True)
    ui = deployed.server.api_url.removesuffix("/api")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{ui}/runs")
        page.wait_for_url("**/login**")  # auth is on: the UI asks for the credentials first
        page.fill("input[type=password]", deployed.server.auth or "")
        page.click("button[type=submit]")
        page.wait_for_url("**/runs**")
        page.goto(f"{ui}/runs")  # afresh: without the refusals' notices from before the login
        run_link = page.locator("a[href*='/runs/flow-run/']", has_text=re.compile(r"^mnist5k \d{4}-\d\d-\d\d: v1 promoted$"))
        expect(run_link).to_have_count(1)
        page.screenshot(path=screenshots / "runs.png")

        run_link.click()
        page.wait_for_url("**/runs/flow-run/**")
        expect(page.get_by_text("Completed").first).to_be_visible()
        page.screenshot(path=screenshots / "flow-run.png", full_page=True)
        page.get_by_text("Task Runs", exact=True).click()
        for stage in STAGES:  # one task run per stage, named after it (a reused one says so)
            expect(page.locator("a[href*='/runs/task-run/']", has_text=re.compile(rf"^{stage}$"))).to_have_count(1)
        page.screenshot(path=screenshots / "flow-run-tasks.png", full_page=True)
        page.get_by_text("Artifacts", exact=True).click()
        for key in ("imgflow-run-mnist5k", "imgflow-data-quality-mnist5k", "imgflow-validation-mnist5k", "imgflow-model-card-mnist5k"):
            expect(page.get_by_text(key).first).to_be_visible()
        page.screenshot(path=screenshots / "flow-run-artifacts.png", full_page=True)

        summary = deployed.summary("mnist5k")
        accuracy = re.search(r"test accuracy: \*\*([0-9.]+)\*\*", summary).group(1)  # type: ignore[union-attr]
        shown = {
            "imgflow-run-mnist5k": ["imgflow run: mnist5k PROMOTED as v1", f"test accuracy: {accuracy}"],
            "imgflow-data-quality-mnist5k": ["Data quality: sample:mnist5k", "records in: 2000"],
            "imgflow-validation-mnist5k": ["Validation: PROMOTE", f"test accuracy: {accuracy}", "precision"],
            "imgflow-model-card-mnist5k": ["Model card: mnist5k v1", "Lineage"],
        }
        for key, texts in shown.items():
            page.goto(f"{ui}/artifacts/key/{key}")
            page.locator("a[href*='/artifacts/artifact/']").first.click()
            for text in texts:
                expect(page.get_by_text(text).first).to_be_visible()
            expect(page.locator("table").first).to_be_visible()  # tables, not a wall of text
            page.screenshot(path=screenshots / f"{key}.png", full_page=True)

        page.goto(f"{ui}/events")
        expect(page.get_by_text("imgflow.model.promoted").first).to_be_visible()
        page.screenshot(path=screenshots / "events.png", full_page=True)
        browser.close()


@pytest.mark.parametrize("deployed", ["postgres"], indirect=True)
def test_on_postgres_a_worker_killed_in_training_is_marked_crashed_and_a_new_worker_resumes_and_promotes(deployed: Deployed) -> None:
    """Slow by nature (about 90 s): after the SIGKILL it waits for Prefect's own zombie automation, which
    marks a run Crashed only after two missed heartbeats (30 s each at least, Prefect's least) and 15 s;
    then a second worker resumes the training. Nothing to share: the server, its PostgreSQL cluster and
    the killed run are the subject."""
    tmp, artifacts = deployed.tmp, deployed.tmp / "artifacts"
    # A client without the credentials is turned away.
    intruder = {key: value for key, value in deployed.env.items() if key != "PREFECT_API_AUTH_STRING"}
    refused = deployed.prefect("work-pool", "ls", check=False, env=intruder)
    assert refused.returncode != 0 and "401" in refused.stdout, refused.stdout[-2000:]

    params = ["--param", "dataset=sample:mnist5k", "--param", "limit=2000", "--param", "epochs=3", "--param", "min_accuracy=0.5",
              "--param", f"artifacts={artifacts}"]

    def in_training() -> bool:
        progress = list((artifacts / "train").glob(".work-*/progress.json"))
        return bool(progress) and json.loads(progress[0].read_text())["epoch"] >= 1

    worker = deployed.worker("doomed")
    try:
        started = deployed.prefect("deployment", "run", "train/retrain", *params)
        killed_run = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)  # type: ignore[union-attr]
        deadline = time.monotonic() + 300
        while not in_training():
            assert worker.poll() is None and time.monotonic() < deadline, (tmp / "doomed.log").read_text()[-3000:]
            time.sleep(0.1)
    finally:
        # The machine dies: the worker and everything under it (the flow run's process, its pools), at once.
        doomed = {worker.pid: 0, **descendants([worker.pid])}
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        worker.wait(timeout=60)
    killed_at = time.monotonic()
    deadline = time.monotonic() + 30
    while running({pid: started for pid, started in doomed.items() if pid != worker.pid}):
        assert time.monotonic() < deadline, "processes of the killed worker survived"
        time.sleep(0.1)
    assert not list((artifacts / "train").glob("*/manifest.json")), "the killed training must not look complete"

    worker = deployed.worker("replacement")
    try:
        rerun = deployed.prefect("deployment", "run", "train/retrain", *params, "--watch", timeout=600)
    finally:
        deployed.stop(worker)
    assert "Completed" in rerun.stdout, rerun.stdout[-3000:] + (tmp / "replacement.log").read_text()[-3000:]
    summary = deployed.summary("mnist5k")
    assert "PROMOTED as v1" in summary, summary
    for stage in ("download", "clean", "shard"):
        assert f"| {stage} | cached |" in summary, summary  # what the killed run finished is reused
    assert re.search(r"\| train \| ran \(resumed from epoch [1-3]\) \|", summary), summary
    assert len(list((artifacts / "train").glob("*/manifest.json"))) == 1 and not list((artifacts / "train").glob(".work-*"))
    # No ghost run: its heartbeats stopped with it, and the server's automation marked it Crashed
    # (within 75 s of its last heartbeat; the rerun above usually took longer than that).
    while "CRASHED" not in (killed := deployed.prefect("flow-run", "inspect", killed_run).stdout):
        assert "RUNNING" in killed and time.monotonic() < killed_at + 180, killed[-3000:]
        time.sleep(5)
    assert "no heartbeat for 75 s" in killed
