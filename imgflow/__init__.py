"""imgflow: an orchestrated batch workflow that turns image data into a validated, exported classifier.

The library (this package) never imports Prefect (``tests/unit/test_layers.py`` checks it): stages
are plain functions over paths and small typed configs, declared once as a pipeline in
``imgflow.pipeline``. ``tasks/`` wraps them as Prefect tasks, and ``flows/`` wires the tasks together
and holds the ``imgflow`` command line.
"""

__version__ = "0.1.0"
