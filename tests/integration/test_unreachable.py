"""Sources that cannot be reached fail in seconds with one paragraph; prepared data needs no network.

Each run is a real ``imgflow run`` process. "No network" is made certain on any machine: HTTP and
HTTPS to anything but this machine go through a proxy on a closed local port (TFDS's downloader and
our checks both honour it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imgflow.runtime.network import free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("session_server")]


_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


def _run(tmp_path: Path, dataset: str, *args: str, offline: bool = True) -> tuple[subprocess.CompletedProcess, float]:
    """``imgflow run`` on ``dataset``; ``offline``: every HTTP(S) request goes to a closed local port."""
    env = {name: value for name, value in os.environ.items() if name not in _PROXIES}
    if offline:
        proxy = f"http://127.0.0.1:{free_port()}"
        local = "127.0.0.1,localhost"  # Prefect's own server is local, as behind a corporate proxy
        env.update({"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
                    "NO_PROXY": local, "no_proxy": local})
    command = [sys.executable, "-m", "flows.cli", "run", "--dataset", dataset, "--artifacts", str(tmp_path / "artifacts"),
               "--epochs", "1", "--min-accuracy", "0", *args]
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    return result, time.monotonic() - started


def _failed_saying(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("imgflow: error: cannot reach "), result.stderr[-3000:]
    for phrase in phrases:
        assert phrase in last, last


@pytest.mark.parametrize(
    ("host", "reason"), [("imgflow-test.invalid", "the host name does not resolve"), ("127.0.0.1:{port}", "the connection was refused")]
)
def test_an_archive_url_that_cannot_be_reached_ends_the_run_in_seconds(tmp_path: Path, host: str, reason: str) -> None:
    host = host.format(port=free_port())
    spec = f"archive:http://{host}/pets.zip#sha256={'0' * 64}"
    result, seconds = _run(tmp_path, spec, offline=False)  # the host itself is what cannot be reached
    _failed_saying(result, f"cannot reach {host} for {spec}: {reason}", f"archive:PATH#sha256={'0' * 64}")
    assert seconds < 30


def test_a_tfds_dataset_whose_download_host_cannot_be_reached_ends_the_run_in_seconds(tmp_path: Path) -> None:
    spec = tmp_path / "mnist.toml"
    spec.write_text(f'source = "tfds:mnist"\n[options]\ndata_dir = "{tmp_path / "tfds"}"\n')
    result, seconds = _run(tmp_path, str(spec))
    _failed_saying(result, "for tfds:mnist", "the connection was refused", "tfds build mnist --data_dir DIR", "data_dir")
    assert seconds < 30


def test_a_tfds_dataset_prepared_in_data_dir_trains_end_to_end_without_network(tmp_path: Path) -> None:
    """Slow by nature (20-40 s): a TFDS builder prepares its data, then the whole pipeline trains on it."""
    import tensorflow_datasets as tfds
    from PIL import Image

    from imgflow.data.sources import open_source, sample_records

    records = sample_records(open_source("sample:mnist5k").records(), 400)
    names = sorted({record.label for record in records})

    class ImgflowDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self) -> tfds.core.DatasetInfo:
            features = {"image": tfds.features.Image(shape=(28, 28, 1)), "label": tfds.features.ClassLabel(names=names)}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):  # noqa: ANN001, ANN202 - TFDS's signature
            return {"train": self._generate_examples()}

        def _generate_examples(self):  # noqa: ANN202
            import io

            for index, record in enumerate(records):
                pixels = np.asarray(Image.open(io.BytesIO(record.image)).convert("L"))[..., None]
                yield index, {"image": pixels, "label": record.label}

    data_dir = tmp_path / "tfds"
    ImgflowDigits(data_dir=str(data_dir)).download_and_prepare()
    spec = tmp_path / "digits.toml"
    spec.write_text(f'source = "tfds:imgflow_digits"\n[options]\ndata_dir = "{data_dir}"\n'
                    "[clean]\nimage_size = [28, 28]\nchannels = 1\n")
    result, _ = _run(tmp_path, str(spec), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"decision": "promoted"' in result.stdout.strip().splitlines()[-1]
