"""Prefect flows: wiring only. The logic lives in ``imgflow``, the task wrappers in ``tasks``.

Importing the package sizes TensorFlow's thread pools to the CPU time this process really has
(``imgflow.runtime.cpus.limit_threads``), before any flow or the CLI imports TensorFlow: a flow run started
by a worker inside a CPU-limited container would otherwise start a thread per visible core.
"""

from imgflow.runtime.cpus import limit_threads

limit_threads()
