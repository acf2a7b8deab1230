"""The ``predict`` flow: label a batch of images with the champion (or a named version)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow
from pydantic import Field

from flows.pipeline import publish
from imgflow.config import BACKENDS
from imgflow.registry import versions as registry
from imgflow.runtime.errors import ConfigError
from imgflow.runtime.lifetime import watch_descendants
from imgflow.serving.batch import PredictConfig, input_options
from tasks.predict import predict_images
from tasks.store import store_at


@flow(name="predict", flow_run_name="predict {input}")
def predict(
    input: Annotated[str, Field(min_length=1, description="PATH, folder:PATH or parquet:PATH_OR_URI")],
    output: Annotated[str, Field(pattern=r"\.parquet$", description="the predictions file, FILE.parquet")],
    artifacts: str = "artifacts",
    name: str | None = None,
    model: str | None = None,
    backend: Literal[BACKENDS] = "onnx",  # type: ignore[valid-type]
    top_k: Annotated[int, Field(ge=1)] = 3,
    batch_size: Annotated[int, Field(ge=1)] = 256,
    dataset: Annotated[str | None, Field(description="a dataset spec whose [options] say how to read a parquet: input")] = None,
    image_column: Annotated[str | None, Field(description="a parquet: input's image column (default: image)")] = None,
    id_column: Annotated[str | None, Field(description="a parquet: input's id column (default: id, if present)")] = None,
    text_column: Annotated[str | None, Field(description="a parquet: input's text column, for a model with text")] = None,
    text_sidecar: Annotated[str | None, Field(description='a folder input\'s text files beside the images, e.g. ".txt"')] = None,
) -> dict[str, Any]:
    """Label every image of ``input`` with model ``name``'s champion, or its version ``model``; write
    one row per image to ``output``. A ``parquet:`` input is read with the ``[options]`` of
    ``dataset`` (a table laid out like the training data), overridden by ``image_column``,
    ``id_column``, ``text_column`` and ``text_sidecar``. Returns the prediction summary."""
    watch_descendants()
    options = input_options(dataset, image_column=image_column, id_column=id_column, text_column=text_column, text_sidecar=text_sidecar)
    store = store_at(artifacts)
    remote = store.shared_uri  # where workers on other machines find the model (None: a folder here)
    artifacts = str(store.pull_models(name))  # an object-store root's registry, pulled here
    name = registry.resolve_name(artifacts, name)
    version = model or (registry.champion(artifacts, name) or {}).get("version")
    if version is None:
        raise ConfigError(f"model {name} has no champion yet: name a version with --model")
    version_dir = registry.verified(artifacts, name, version)
    summary = predict_images(input, str(version_dir.resolve()), output, PredictConfig(backend, top_k, batch_size), options, remote)
    publish(
        f"imgflow-predict-{name}",
        f"# Predictions: {summary['model']} {summary['version']} ({summary['backend']})\n\n"
        f"- input: `{input}`\n- output: `{summary['output']}`\n- rows: {summary['rows']} "
        f"({summary['predicted']} predicted, {summary['errors']} with an error)\n"
        f"- throughput: {summary['images_per_second']} images/s\n",
        "batch prediction summary",
    )
    return summary
