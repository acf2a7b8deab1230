"""The process of ``TemporaryAPI``'s server (``flows.server``): uvicorn serving Prefect's API app, as
``python -m uvicorn`` would, with the server's imports done while the garbage collector is paused and
then frozen out of its later collections (``imgflow.runtime.memory.settling``): less CPU before it
answers, on the same cores where the command is importing TensorFlow."""

from __future__ import annotations

from imgflow.runtime.memory import settle, settling

if __name__ == "__main__":
    with settling():
        import prefect.server.api.server  # noqa: F401 - the app's module, which uvicorn imports by name
        import uvicorn

        settle()
    uvicorn.main()
