"""The work pools ``deploy/prefect.yaml`` deploys to, created on a server once.

``prefect deploy --no-prompt`` refuses a pool that does not exist, so ``imgflow server start`` creates
them: ``imgflow`` (a process per flow run, from the worker's checkout), ``imgflow-docker`` (a fresh
container of imgflow's image per flow run; ``prefect-docker``) and ``imgflow-kubernetes`` (a Job per
flow run, with imgflow's base job template: ``flows.kubernetes``). A pool whose worker package is not
installed is left out, saying which package would add it. A pool that exists is left as it is: its
template may have been edited on purpose.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from flows.kubernetes import POOL as KUBERNETES_POOL
from flows.kubernetes import base_job_template

PROCESS_POOL = "imgflow"
DOCKER_POOL = "imgflow-docker"


@dataclass(frozen=True)
class PoolOutcome:
    name: str
    kind: str
    outcome: str  # "created", "exists" or why it was left out


def pool_templates() -> dict[str, tuple[str, dict[str, Any] | str]]:
    """Each pool's worker type and base job template, or why it cannot be made here."""
    from prefect.workers.process import ProcessWorker

    templates: dict[str, tuple[str, dict[str, Any] | str]] = {PROCESS_POOL: ("process", ProcessWorker.get_default_base_job_template())}
    try:
        from prefect_docker.worker import DockerWorker
    except ImportError:
        templates[DOCKER_POOL] = ("docker", "prefect-docker is not installed (pip install 'imgflow[workers]')")
    else:
        templates[DOCKER_POOL] = ("docker", DockerWorker.get_default_base_job_template())
    try:
        templates[KUBERNETES_POOL] = ("kubernetes", base_job_template())
    except ImportError:
        templates[KUBERNETES_POOL] = ("kubernetes", "prefect-kubernetes is not installed (pip install 'imgflow[workers]')")
    return templates


def create_pools(api_url: str, auth_string: str | None = None) -> list[PoolOutcome]:
    """Create the pools that do not exist yet on the server at ``api_url``."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async def create() -> list[PoolOutcome]:
        outcomes = []
        async with PrefectClient(api_url, auth_string=auth_string) as client:
            for name, (kind, template) in pool_templates().items():
                if isinstance(template, str):
                    outcomes.append(PoolOutcome(name, kind, template))
                    continue
                try:
                    await client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template))
                except ObjectAlreadyExists:
                    outcomes.append(PoolOutcome(name, kind, "exists"))
                else:
                    outcomes.append(PoolOutcome(name, kind, "created"))
        return outcomes

    return asyncio.run(create())
