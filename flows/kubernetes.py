"""A Kubernetes work pool for imgflow: its base job template, a deployment's Job rendered from it, and
that Job checked offline against the Kubernetes API's own models.

The template starts from the one ``prefect-kubernetes`` ships, so that it follows the worker's version,
and changes what imgflow needs:

- the image defaults to imgflow's (``make image``), run as its non-root user;
- CPU and memory requests and limits with defaults that fit the bundled sample, and a GPU limit
  (``gpu_limit``, ``nvidia.com/gpu``) that is left out unless a deployment sets it;
- the artifact root on S3: its credentials come from a Secret (``s3_secret``, default ``imgflow-s3``:
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and, for a store other than AWS, ``AWS_ENDPOINT_URL``)
  as environment variables, never from the deployment;
- ``completions`` and ``parallelism`` move to the Job's spec: the shipped template puts them in the
  pod's spec, where the API server does not know them (the check below finds that).

Nothing here talks to a cluster: rendering uses the worker's own templating, and the check walks the
manifest against the generated models of the Kubernetes client that ``prefect-kubernetes`` brings
(``kubernetes_asyncio``): every field known at its place, of its type, and every required one given.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import re
import uuid
from pathlib import Path
from typing import Any

import yaml

from imgflow.runtime.errors import ConfigError

POOL = "imgflow-kubernetes"
IMAGE = "imgflow:latest"
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
# The generated models' names for plain JSON values, and what each accepts ("object": anything, such as
# an int-or-string port).
SCALARS: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "bool": bool,
    "float": (int, float),
    "datetime": str,
    "date": str,
    "object": object,
}
# The template's new variables, with the JSON schema the work pool shows and checks them against.
VARIABLES: dict[str, dict[str, Any]] = {
    "cpu_request": {
        "type": "string",
        "default": "1",
        "title": "CPU request",
        "description": "cores the scheduler reserves (a quantity: 1, 500m)",
    },
    "cpu_limit": {
        "type": "string",
        "default": "2",
        "title": "CPU limit",
        "description": "the CFS quota imgflow sizes its pools to (a quantity)",
    },
    "memory_request": {"type": "string", "default": "4Gi", "title": "Memory request", "description": "memory the scheduler reserves"},
    "memory_limit": {
        "type": "string",
        "default": "4Gi",
        "title": "Memory limit",
        "description": "past it the kernel kills the run (a quantity: 4Gi)",
    },
    "gpu_limit": {"type": "integer", "minimum": 1, "title": "GPUs", "description": "nvidia.com/gpu; leave unset for none"},
    "s3_secret": {
        "type": "string",
        "default": "imgflow-s3",
        "title": "S3 credentials Secret",
        "description": "a Secret whose keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL...) become the run's environment",
    },
}


def base_job_template() -> dict[str, Any]:
    """The base job template of imgflow's Kubernetes work pool (see the module docstring); what
    ``imgflow deploy k8s-template`` prints for ``prefect work-pool create --base-job-template``."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    properties = template["variables"]["properties"]
    properties["image"]["default"] = IMAGE
    properties.update(copy.deepcopy(VARIABLES))
    job = template["job_configuration"]["job_manifest"]
    pod = job["spec"]["template"]["spec"]
    for field in ("completions", "parallelism"):
        job["spec"][field] = pod.pop(field, 1)
    pod["securityContext"] = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001}
    container = pod["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_limit }}"
    container["envFrom"] = [{"secretRef": {"name": "{{ s3_secret }}", "optional": True}}]
    return template


def deployment_variables(name: str, prefect_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A deployment's job variables and parameters from a ``prefect.yaml`` (its ``name``, or
    ``flow/name`` as ``prefect deployment run`` spells it)."""
    try:
        document = yaml.safe_load(prefect_file.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{prefect_file}: cannot read it as a prefect.yaml: {error}") from error
    deployments = {entry.get("name"): entry for entry in (document or {}).get("deployments") or []}
    wanted = name.rsplit("/", 1)[-1]
    if wanted not in deployments:
        raise ConfigError(f"{prefect_file} has no deployment {wanted!r}; it has: {', '.join(sorted(map(str, deployments)))}")
    entry = deployments[wanted]
    pool = (entry.get("work_pool") or {}).get("name")
    if pool != POOL:
        raise ConfigError(f"deployment {wanted!r} runs on work pool {pool!r}, not the Kubernetes pool {POOL!r}")
    return dict((entry.get("work_pool") or {}).get("job_variables") or {}), dict(entry.get("parameters") or {})


def render(variables: dict[str, Any], template: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Job the Kubernetes worker would create for a flow run of a deployment with these job
    variables: the worker's own templating and preparation, for a flow run that does not exist."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async def configured() -> KubernetesWorkerJobConfiguration:
        # No server is asked: the client would only resolve block and variable references, which the
        # template has none of (an unreachable address makes sure of that).
        async with PrefectClient("http://127.0.0.1:9/api") as client:
            return await KubernetesWorkerJobConfiguration.from_template_and_values(
                template or base_job_template(), variables, client=client
            )

    configuration = asyncio.run(configured())
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), id=uuid.uuid4(), name="rendered"))
    return configuration.job_manifest


def problems(manifest: dict[str, Any], kind: str = "V1Job") -> list[str]:
    """What the Kubernetes API would refuse in ``manifest``, field by field (empty: none found)."""
    found: list[str] = []
    _check(manifest, kind, "", found)
    return found


def _check(value: Any, kind: str, where: str, found: list[str]) -> None:
    from kubernetes_asyncio.client import models

    place = where or "the manifest"
    if kind.startswith("list["):
        if not isinstance(value, list):
            found.append(f"{place}: expected a list, got {value!r}")
            return
        for index, item in enumerate(value):
            _check(item, kind[5:-1], f"{where}[{index}]", found)
    elif kind.startswith("dict("):
        if not isinstance(value, dict):
            found.append(f"{place}: expected a mapping, got {value!r}")
            return
        inner = kind[5:-1].split(", ", 1)[1]
        quantities = where.endswith((".limits", ".requests"))
        for key, item in value.items():
            if quantities:
                _quantity(item, f"{where}.{key}", found)
            else:
                _check(item, inner, f"{where}.{key}", found)
    elif kind in SCALARS:
        expected = SCALARS[kind]
        if not isinstance(value, expected) or (kind in ("int", "float") and isinstance(value, bool)):
            found.append(f"{place}: expected {kind}, got {value!r}")
    else:
        _check_model(value, getattr(models, kind), where, found)


def _check_model(value: Any, model: Any, where: str, found: list[str]) -> None:
    """An object of a generated model: known fields only, each of its type, required ones present
    (the model's own constructor says which, and which values an enumerated field allows)."""
    if not isinstance(value, dict):
        found.append(f"{where or 'the manifest'}: expected an object ({model.__name__}), got {value!r}")
        return
    attributes = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in attributes:
            found.append(f"{where}.{key}: {model.__name__} has no field {key!r}" if where else f"{key}: not a field of {model.__name__}")
        elif item is not None:
            _check(item, model.openapi_types[attributes[key]], f"{where}.{key}" if where else key, found)
    given = {attributes[key]: item for key, item in value.items() if key in attributes and item is not None}
    accepted = set(inspect.signature(model.__init__).parameters)
    try:
        model(**{name: item for name, item in given.items() if name in accepted})
    except ValueError as refused:
        found.append(f"{where or 'the manifest'}: {refused}")


def _quantity(value: Any, where: str, found: list[str]) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) or (isinstance(value, str) and QUANTITY.match(value))):
        found.append(f"{where}: {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
