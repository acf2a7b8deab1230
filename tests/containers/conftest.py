"""Fixtures of the container tests: a Docker daemon that answers, and imgflow's image built on it
(``make image``; ``make test-containers`` builds it first)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

IMAGE = os.environ.get("IMGFLOW_IMAGE", "imgflow:latest")


@pytest.fixture(scope="session")
def image() -> str:
    """The image's tag, once a Docker daemon answers and has it; skipped, saying why, without a daemon."""
    if not shutil.which("docker"):
        pytest.skip("no docker command: apt-get install -y docker.io (the CI script installs and starts it)")
    answer = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, check=False)
    if answer.returncode != 0:
        pytest.skip(f"no Docker daemon answers ({answer.stderr.strip()[-300:]}): start one, e.g. dockerd --iptables=false "
                    "--bridge=none & (.ci/docker-daemon)")
    found = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, text=True, check=False)
    assert found.returncode == 0, f"no image {IMAGE} on this daemon: make image builds it (make test-containers does first)"
    return IMAGE
