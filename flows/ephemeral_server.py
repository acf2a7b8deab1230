"""The process of ``TemporaryAPI``'s server (``flows.server``): uvicorn serving Prefect's API app, as
``python -m uvicorn`` would, with the server's imports done while the garbage collector is paused and
then frozen out of its later collections (``imgflow.runtime.memory.settling``): less CPU before it
answers, on the same cores where the command is importing TensorFlow.

It runs in a session of its own (so a Ctrl-C to the command's group lets the run record its final
state before it stops this server), which also puts it out of reach of a SIGKILL to that group: so
it dies with the command that started it, however that ends (``follow_parent``), first thing."""

from __future__ import annotations

from imgflow.runtime.lifetime import follow_parent
from imgflow.runtime.memory import settle, settling

if __name__ == "__main__":
    follow_parent()
    with settling():
        import prefect.server.api.server  # noqa: F401 - the app's module, which uvicorn imports by name
        import uvicorn

        settle()
    uvicorn.main()
