"""imgflow: an orchestrated batch workflow that turns image data into a validated, exported classifier.

The library (this package) never imports Prefect: stages are plain functions over paths and small
typed configs. ``tasks/`` wraps them as Prefect tasks and ``flows/`` wires the tasks together.
"""

__version__ = "0.1.0"
