"""No ghost runs: a lasting server marks a flow run whose process died without a word as Crashed.

Prefect's own mechanism (https://docs.prefect.io/v3/advanced/detect-zombie-flows): every flow run emits
a ``prefect.flow-run.heartbeat`` event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds while it
runs, and an automation with a proactive trigger sets the run Crashed when, after a heartbeat, neither
another one nor a final state (Completed, Failed, Cancelled, Crashed) comes within ``grace(seconds)``.
``imgflow server start`` makes that automation on its server (``watch_heartbeats``), and the lines a
client or worker sources (``client.env``) set the heartbeat the automation expects.

Without it, a run whose worker lost its machine (a SIGKILL, the out-of-memory killer, a preempted
node) shows Running in the UI for as long as anyone looks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flows.server import RunningServer

AUTOMATION = "imgflow: crash runs whose heartbeats stopped"
HEARTBEAT = 60  # seconds between a flow run's heartbeats, by default (Prefect's own is 180)
MINIMUM_HEARTBEAT = 30  # Prefect's least
_FINAL = ("prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed")


def grace(heartbeat: int) -> timedelta:
    """How long after a heartbeat a run may stay silent: two missed beats and a margin for a busy
    machine (a heartbeat thread under a CPU quota can be late), so a slow run is never taken for dead."""
    return timedelta(seconds=2 * heartbeat + 15)


def watch_heartbeats(server: RunningServer, heartbeat: int) -> None:
    """Make (or make again, with this ``heartbeat``) the automation that crashes silent runs on ``server``."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: server.auth}):
        with get_client(sync_client=True) as client:
            for old in client.read_automations_by_name(AUTOMATION):
                client.delete_automation(old.id)
        within = grace(heartbeat)
        Automation(
            name=AUTOMATION,
            description=f"A flow run that has sent no heartbeat for {within.total_seconds():.0f} s (they come every {heartbeat} s) "
            "lost its process: mark it Crashed, so it does not show Running forever.",
            trigger=EventTrigger(
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", *_FINAL},
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=within,
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED,
                    name="Crashed",
                    force=False,
                    message=f"no heartbeat for {within.total_seconds():.0f} s: its process died",
                )
            ],
        ).create()
