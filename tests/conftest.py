"""Shared fixtures. Prefect settings point at a temporary home before Prefect is imported, so no test
touches ~/.prefect."""

from __future__ import annotations

import fcntl
import faulthandler
import io
import json
import os
import struct
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_PREFECT_HOME = tempfile.mkdtemp(prefix="imgflow-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(Path(_PREFECT_HOME) / "storage")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import absl.logging  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

# absl's log handler (TensorFlow's logging) writes to the sys.stderr of the moment absl was imported: in
# a test worker, pytest's capture of it. Prefect's first import reconfigures logging, which closes every
# handler, and absl's closes its stream unless that is the *current* sys.stderr: inside a test using
# capsys it is not, so a worker that imported TensorFlow and then first imports Prefect in such a test
# loses pytest's capture, and every later test on it errors ("I/O operation on closed file"). The
# process's own stderr absl never closes, and pytest captures it all the same, at the descriptor.
absl.logging.get_absl_handler().python_handler.setStream(sys.__stderr__)

from imgflow.results import StageResult, TrainInfo  # noqa: E402
from imgflow.store.artifacts import ArtifactStore  # noqa: E402
from imgflow.store.stage import Stage  # noqa: E402

# How long the session may take, after its last test ran, to tear its servers down and exit.
_EXIT_GRACE_SECONDS = 180
# Each long test's seconds (setup, call and teardown) in a full run, longest first: the order the suite
# starts them in. Rewritten by `make durations` (pytest --store-durations).
DURATIONS = Path(__file__).with_name("durations.json")
_LONG_SECONDS = 3.0  # tests shorter than this keep their place (and their modules' fixtures together)
_durations: dict[str, float] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--store-durations", action="store_true", help=f"write each test's seconds over {_LONG_SECONDS:.0f} s to {DURATIONS}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The long tests first, longest first; the rest after them in their usual order. With one test
    handed to each free worker at a time (the Makefile's ``--dist load --maxschedchunk 1``), that is
    greedy longest-first scheduling: a 90 s test started last no longer runs alone at the end while
    the other workers idle. A long test not yet in the file (a new one) goes by its ``slow`` mark."""
    known = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    guess = {item.nodeid: known.get(item.nodeid, _LONG_SECONDS if item.get_closest_marker("slow") else 0.0) for item in items}
    items.sort(key=lambda item: -guess[item.nodeid] if guess[item.nodeid] >= _LONG_SECONDS else 0.0)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """``--store-durations``: the controller (not an xdist worker) writes what every worker reported."""
    if session.config.getoption("store_durations") and not hasattr(session.config, "workerinput"):
        long = {nodeid: round(seconds, 1) for nodeid, seconds in _durations.items() if seconds >= _LONG_SECONDS}
        DURATIONS.write_text(json.dumps(dict(sorted(long.items(), key=lambda item: -item[1])), indent=1) + "\n")


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> tuple[Path, Any]:
    """A folder that every pytest-xdist worker of this session shares, built by whichever asks first
    (the others wait on a file lock) with ``build(folder)``, and the JSON value it returned. For an
    expensive module fixture whose tests only read it: handed out one test at a time, its tests land on
    every worker, and each would otherwise build its own."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = shared / name, shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            folder.mkdir(exist_ok=True)
            done.write_text(json.dumps(build(folder)))
    return folder, json.loads(done.read_text())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Before the last test's teardown (which stops the session's servers), start a watchdog: if the
    process has not exited ``_EXIT_GRACE_SECONDS`` later, it prints where every thread is stuck and
    exits with the session's result. Third-party shutdown code (Prefect's unbounded log and event
    drains, pyarrow's S3 finaliser: apache/arrow#50188) can hang a process whose tests have all been
    reported; CI would then time out with the verdict unprinted. The watchdog turns that into a
    loud traceback and a prompt exit."""
    if nextitem is not None:
        return
    session = item.session

    def watch() -> None:
        threading.Event().wait(_EXIT_GRACE_SECONDS)
        status = 1 if session.testsfailed else 0
        sys.stdout.flush()
        print(
            f"\nThe test process had not exited {_EXIT_GRACE_SECONDS} s after its last test "
            f"({session.testsfailed} failed); where each thread was stuck:",
            file=sys.__stderr__, flush=True,
        )
        faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
        os._exit(status)

    threading.Thread(target=watch, name="exit watchdog", daemon=True).start()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """The watchdog's backstop for a hang that holds the GIL (its thread could not run): faulthandler's
    own C thread prints the stacks and exits with status 1 a minute after the watchdog would have."""
    faulthandler.dump_traceback_later(_EXIT_GRACE_SECONDS + 60, exit=True, file=sys.__stderr__)


@pytest.fixture(scope="session")
def prefect_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty Prefect SQLite database with every migration applied, made once for the session and
    every pytest-xdist worker (``built_once``). A server whose home gets a copy (``seed_prefect_home``)
    starts in ~3 s instead of first spending ~8 s of a core migrating a new one: seven servers in a
    full run. Migrating a new database is timed by benchmarks/orchestration_overhead.py, and a new
    home's first run is what ``imgflow run`` does on a fresh machine, but no test's subject."""
    import subprocess

    def build(folder: Path) -> str:
        env = {**os.environ, "PREFECT_HOME": str(folder)}
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env=env, check=True,
                       capture_output=True, timeout=300)
        return str(folder / "prefect.db")

    return Path(built_once(tmp_path_factory, "prefect-database", build)[1])


def seed_prefect_home(database: Path, home: Path) -> None:
    """Give the Prefect home ``home`` a copy of the migrated ``database``, unless it has one already."""
    import shutil

    home.mkdir(parents=True, exist_ok=True)
    if not (home / "prefect.db").exists():
        shutil.copyfile(database, home / "prefect.db")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory, prefect_database: Path) -> Iterator[str]:
    """A real ``prefect server start`` on 127.0.0.1 for the whole session (one per pytest-xdist worker),
    for tests that start many ``imgflow`` processes: each talks to it (``PREFECT_API_URL``) instead of
    starting a temporary server of its own. Yields its API URL."""
    from flows.server import prefect_server

    home = tmp_path_factory.mktemp("prefect-server")
    seed_prefect_home(prefect_database, home)
    with prefect_server(home) as server:
        yield server.api_url


@pytest.fixture(scope="session")
def prefect_harness(prefect_api: str) -> Iterator[None]:
    """Flows run in the test process talk to the session's server (``prefect_api``), as Prefect's own
    ``prefect_test_harness`` would have them talk to a temporary one that it starts (and migrates)
    for itself. The logs and events still queued are sent before the server goes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        try:
            yield
        finally:
            APILogWorker.drain_all(timeout=30)
            EventsWorker.drain_all(timeout=30)


@pytest.fixture
def session_server(prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ``imgflow`` processes a test starts (they inherit this environment) talk to the session's
    server instead of each starting Prefect's temporary server, 3-4 s of a core apiece: for the tests
    of something else. tests/integration/test_cli.py's end-to-end run and test_orphans.py keep the
    temporary server, since that is what they test."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    return prefect_api


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 server on 127.0.0.1 (moto's), with one bucket: yields ``s3://imgflow-test``. Its
    endpoint and test credentials are set in this process's environment, which the runs the tests
    start inherit (boto3 and pyarrow both read ``AWS_ENDPOINT_URL``)."""
    import shutil
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3")
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket="imgflow-test")
                break
            except Exception:  # not listening yet
                assert server.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        yield "s3://imgflow-test"
    finally:
        server.terminate()
        server.wait(timeout=30)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def s3_root(s3_server: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """An empty artifact root on the test S3 server, one per test; leases last 2 s (not 30) so a
    test that kills a holder waits little; the local mirror under the test's tmp_path."""
    import uuid

    monkeypatch.setenv("IMGFLOW_LEASE_SECONDS", "2")
    monkeypatch.setenv("IMGFLOW_CACHE", str(tmp_path / "mirror"))
    return f"{s3_server}/{request.node.name.replace('[', '-').rstrip(']')[:40]}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def shards(store: ArtifactStore) -> StageResult:
    """Real shards of 300 of scikit-learn's 8x8 digits (the stages' own outputs)."""
    from imgflow.config import CleanConfig, DownloadConfig, ShardConfig
    from imgflow.stages.clean import CLEAN
    from imgflow.data.sources import source_fingerprint
    from imgflow.stages.download import DOWNLOAD
    from imgflow.stages.shard import SHARD

    config = DownloadConfig(source="sample:digits", limit=300)
    raw = DOWNLOAD.run(store, config, {"source": source_fingerprint(config.source)})
    clean = CLEAN.run(store, CleanConfig(image_size=(8, 8), channels=1), {"raw": raw})
    return SHARD.run(store, ShardConfig(), {"clean": clean})


def encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    """Image file bytes of ``array`` in ``fmt``, optionally converted to ``mode`` first."""
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def claimed_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape):
    its pixel data is a few bytes of zeros."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def digit_like(seed: int, size: int = 16) -> np.ndarray:
    """A distinct random grayscale image (the seed decides its content)."""
    return np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)


def untrained_model(store: ArtifactStore, shards: StageResult, seed: int) -> StageResult:
    """A stand-in for the train stage: an untrained model with a fixed seed, stored as a train output."""

    def build(out_dir: Path, config: dict, inputs: dict) -> TrainInfo:
        import keras

        from imgflow.training.models import make_model
        from imgflow.results import Hardware

        keras.utils.set_random_seed(seed)
        model = make_model((8, 8, 1), len(shards.info.class_names), width=4)
        model.save(out_dir / "model.keras")
        hardware = Hardware(strategy="default", precision="float32", jit_compile=False, replicas=1, workers=1, augment_on_device=False)
        return TrainInfo(epochs=0, resumed_from_epoch=0, train_records=0, parameters=model.count_params(), final={}, hardware=hardware)

    return Stage("train", "test", build).run(store, {"seed": seed}, {"shards": shards})
