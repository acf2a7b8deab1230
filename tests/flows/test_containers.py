"""The pieces of running in containers that need no Docker: the Kubernetes job template rendered and
checked against the API's models, the container's memory limit read from its cgroup, and the first
process that says a child was killed for memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.container import supervise
from flows.kubernetes import base_job_template, deployment_variables, problems, render
from imgflow.runtime.errors import ConfigError
from imgflow.runtime.memlimit import MemoryGroup, gibibytes, memory_group

REPO = Path(__file__).resolve().parents[2]


def test_the_kubernetes_deployment_renders_a_job_the_api_accepts_with_its_limits_secret_and_gpu() -> None:
    variables, parameters = deployment_variables("train/retrain-kubernetes", REPO / "deploy" / "prefect.yaml")
    assert parameters["artifacts"].startswith("s3://")
    job = render(variables)
    assert problems(job) == []
    assert job["kind"] == "Job" and job["spec"]["completions"] == 1 and job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == variables["image"]
    assert container["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "2", "memory": "4Gi"}}
    assert container["envFrom"] == [{"secretRef": {"name": "imgflow-s3", "optional": True}}]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["args"] == ["prefect", "flow-run", "execute"]  # the image's entry point runs it under flows.container

    with_gpu = render({**variables, "gpu_limit": 1})
    assert with_gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert problems(with_gpu) == []


def test_the_check_finds_what_the_api_would_refuse() -> None:
    from prefect_kubernetes.worker import KubernetesWorker

    # prefect-kubernetes's own template puts two Job fields in the pod's spec (why imgflow's moves them)
    shipped = problems(render({"image": "imgflow:latest"}, KubernetesWorker.get_default_base_job_template()))
    assert shipped == [
        "spec.template.spec.completions: V1PodSpec has no field 'completions'",
        "spec.template.spec.parallelism: V1PodSpec has no field 'parallelism'",
    ]
    job = render({"cpu_limit": "two", "memory_limit": "4GB"})
    container = job["spec"]["template"]["spec"]["containers"][0]
    del container["name"]
    container["imagePullPolicy"] = 3
    container["volumeMount"] = []
    assert problems(job) == [
        "spec.template.spec.containers[0].imagePullPolicy: expected str, got 3",
        "spec.template.spec.containers[0].resources.limits.cpu: 'two' is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)",
        "spec.template.spec.containers[0].resources.limits.memory: '4GB' is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)",
        "spec.template.spec.containers[0].volumeMount: V1Container has no field 'volumeMount'",
        "spec.template.spec.containers[0]: Invalid value for `name`, must not be `None`",
    ]
    template = base_job_template()
    # a variable the template names but nobody defines renders as nothing: the rest of a string is left
    template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["nodeSelector"] = "{{ node_pool }}x"
    assert problems(render({}, template)) == ["spec.template.spec.nodeSelector: expected a mapping, got 'x'"]


def test_render_k8s_names_what_is_wrong_with_the_deployment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="runs on work pool 'imgflow', not the Kubernetes pool 'imgflow-kubernetes'"):
        deployment_variables("retrain", REPO / "deploy" / "prefect.yaml")
    with pytest.raises(ConfigError, match=r"has no deployment 'nightly'; it has: .*retrain-kubernetes"):
        deployment_variables("nightly", REPO / "deploy" / "prefect.yaml")
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "deploy", "render-k8s", "retrain-kubernetes"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kind: Job" in done.stdout and "is valid against the Kubernetes API's models (checked offline" in done.stderr


def _cgroup(root: Path, version: int, limit: str, kills: int) -> Path:
    if version == 2:
        root.mkdir(parents=True, exist_ok=True)
        (root / "memory.max").write_text(f"{limit}\n")
        (root / "memory.events").write_text(f"low 0\nhigh 0\nmax 3\noom 1\noom_kill {kills}\noom_group_kill 0\n")
    else:
        (root / "memory").mkdir(parents=True, exist_ok=True)
        (root / "memory" / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (root / "memory" / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n")
    return root


def test_the_containers_memory_limit_and_kills_are_read_from_either_cgroup_version(tmp_path: Path) -> None:
    assert memory_group(_cgroup(tmp_path / "v2", 2, str(4 * 2**30), 2)) == MemoryGroup(4 * 2**30, 2)
    assert memory_group(_cgroup(tmp_path / "v2max", 2, "max", 0)) == MemoryGroup(None, 0)
    assert memory_group(_cgroup(tmp_path / "v1", 1, str(2**29), 1)) == MemoryGroup(2**29, 1)
    assert memory_group(_cgroup(tmp_path / "v1none", 1, "9223372036854771712", 0)).limit is None
    assert memory_group(tmp_path / "nothing") == MemoryGroup(None, None)
    assert (gibibytes(4 * 2**30), gibibytes(int(1.5 * 2**30)), gibibytes(512 * 2**20)) == ("4 GiB", "1.5 GiB", "512 MiB")


def test_a_child_killed_for_memory_is_said_to_be_and_the_container_exits_137(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The kernel's part is played by the child: it counts an out-of-memory kill in the (fake) cgroup,
    then dies of SIGKILL, as a process the out-of-memory killer chose does."""
    cgroup = _cgroup(tmp_path / "cg", 2, str(4 * 2**30), 0)
    events = cgroup / "memory.events"
    oom = f"import os, signal, pathlib; p = pathlib.Path({str(events)!r}); p.write_text(p.read_text().replace('oom_kill 0', 'oom_kill 1')); os.kill(os.getpid(), signal.SIGKILL)"
    assert supervise([sys.executable, "-c", oom], cgroup) == 137
    assert "imgflow: the flow run's process was killed: out of memory (the container's limit is 4 GiB)" in capsys.readouterr().err

    # The flow run's own process below the child was the one killed (prefect flow-run execute): the child
    # fails, and the counter says why.
    events.write_text(events.read_text().replace("oom_kill 1", "oom_kill 0"))
    assert supervise([sys.executable, "-c", oom.replace("os.kill(os.getpid(), signal.SIGKILL)", "raise SystemExit(1)")], cgroup) == 137
    assert "out of memory (the container's limit is 4 GiB)" in capsys.readouterr().err

    # killed by something else (docker kill of the child, a person): 137, and no word about memory
    assert supervise([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], cgroup) == 137
    assert "out of memory" not in capsys.readouterr().err
    assert supervise([sys.executable, "-c", "raise SystemExit(3)"], cgroup) == 3
