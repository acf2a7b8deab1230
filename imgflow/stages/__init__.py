"""The pipeline's stages, one module each: download, clean, merge, shard, train, validate, export.

Each module defines one ``Stage`` (name, code version, build function) and documents the layout of its
output folder. A stage imports only modules below the stages (``imgflow.data.images``,
``imgflow.data.cleantable``, ``imgflow.serving.inference``, ``imgflow.results``, ...), never another stage; how they
connect is declared once in ``imgflow.pipeline``. Stage modules import TensorFlow only inside their
build functions, so a run whose stages are all cached never pays for importing it.
"""
