"""The pipeline's stages: download -> clean -> shard -> train -> validate -> export.

Each module defines one ``Stage`` (name, code version, build function) and documents the layout of its
output folder. Stage modules import TensorFlow only inside their build functions, so a run whose
stages are all cached never pays for importing it.
"""
