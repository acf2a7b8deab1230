"""The run parameters, declared once.

Each model below is what one flow takes. The flow's signature is made from it (``takes``), so Prefect
validates a run's parameters and draws a deployment's form in its UI from these fields; the command
line makes its flags and their help from the same fields (``add_flags``) and checks what it was given
against them (``from_args``) before anything starts. A field's description is its help everywhere.
Importing this module imports pydantic, not Prefect: ``imgflow plan`` stays quick.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgflow.pipeline import ORDER
from imgflow.runtime.errors import ConfigError

if TYPE_CHECKING:
    from imgflow.pipeline.context import Run

Model = TypeVar("Model", bound=BaseModel)
StageName = Literal[ORDER]  # type: ignore[valid-type]

Dataset = Annotated[str, Field(min_length=1, description="a name in datasets/, a .toml file, or a source spec such as sample:mnist5k")]
Artifacts = Annotated[str, Field(min_length=1, description="the artifact root: a folder, or s3://bucket/prefix")]
Epochs = Annotated[int | None, Field(ge=1, description="training epochs (default: the dataset's, else 15)")]
Accuracy = Annotated[float | None, Field(ge=0.0, le=1.0, description="the gate's accuracy floor on the test split (default 0.98)")]
Budget = Annotated[
    str | None,
    Field(
        min_length=1,
        description="a time budget for the whole run, such as 15m, 90s or 1h30m: the recipe chooses every [train] setting "
        "the spec leaves open to fill it",
        json_schema_extra={"metavar": "TIME"},
    ),
]


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def open_run(self, **how: Any) -> Run:
        """The run these parameters describe, built once (``imgflow.pipeline.context.open_run``: its
        settings, partitions and store); ``how``: which partitions, as of when."""
        from imgflow.pipeline.context import open_run

        values = self.model_dump()
        settings = {name: values[name] for name in ("epochs", "min_accuracy", "limit", "budget") if name in values}
        return open_run(values["dataset"], values["artifacts"], **settings, **how)


class RunParams(_Params):
    """A run of the pipeline: the ``train`` flow, ``imgflow run`` and ``imgflow plan``."""

    dataset: Dataset = "mnist5k"
    artifacts: Artifacts = "artifacts"
    epochs: Epochs = None
    min_accuracy: Accuracy = None
    limit: Annotated[int | None, Field(ge=1, description="a fixed sample of N records of the source, for quick runs")] = None
    budget: Budget = None
    refresh: Annotated[
        StageName | None,
        Field(description="run this stage and every stage downstream of it again, even if cached", json_schema_extra={"metavar": "STAGE"}),
    ] = None
    until: Annotated[
        StageName | None, Field(description="stop after this stage (and what it needs)", json_schema_extra={"metavar": "STAGE"})
    ] = None


class BackfillParams(_Params):
    """A backfill: each date partition in a range once, then a model on their union (the ``backfill`` flow)."""

    dataset: Annotated[str, Field(min_length=1, description="parquet:ROOT (with date=YYYY-MM-DD folders) or a spec naming one")]
    start: Annotated[dt.date, Field(description="the first partition's date, YYYY-MM-DD (included)")]
    end: Annotated[dt.date, Field(description="the last partition's date, YYYY-MM-DD (included)")]
    artifacts: Artifacts = "artifacts"
    epochs: Epochs = None
    min_accuracy: Accuracy = None
    budget: Budget = None


class TuneParams(_Params):
    """A search of ``[train]`` settings, then the released one through the pipeline (the ``tune`` flow)."""

    dataset: Dataset = "mnist5k"
    trials: Annotated[int, Field(ge=1, description="trials in all, earlier runs' of the same search included")] = 8
    space: Annotated[str | None, Field(description="a TOML file of the search space (default: the dataset spec's [search])")] = None
    artifacts: Artifacts = "artifacts"
    epochs: Epochs = None
    min_accuracy: Accuracy = None
    limit: Annotated[int | None, Field(ge=1, description="a fixed sample of N records of the source, for quick runs")] = None
    parallel: Annotated[int, Field(ge=1, description="trials at once: keep 1 with threads, up to the workers with Dask")] = 1
    seed: Annotated[int, Field(description="the sampler's seed (part of the study's name)")] = 0


def takes(model: type[BaseModel]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a flow function ``fn(params, **rest)`` the signature ``model``'s fields make, followed by
    ``rest``'s own parameters: Prefect reads, validates and shows parameters from the signature."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn, eval_str=True)  # the annotations as objects: they are read elsewhere
        own = list(signature.parameters.values())[1:]  # after ``params``
        fields = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if info.is_required() else info.default,
                annotation=Annotated[(info.annotation, *info.metadata, Field(description=info.description))],
            )
            for name, info in model.model_fields.items()
        ]
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

        def flow_function(**values: Any) -> Any:
            params = model(**{name: values.pop(name) for name in model.model_fields if name in values})
            return fn(params, **values)

        flow_function.__signature__ = inspect.Signature([*fields, *rest], return_annotation=signature.return_annotation)  # type: ignore[attr-defined]
        flow_function.__annotations__ = {p.name: p.annotation for p in [*fields, *rest]}
        for attribute in ("__name__", "__qualname__", "__module__"):
            setattr(flow_function, attribute, getattr(fn, attribute))
        # Prefect describes each parameter in the deployment form from an "Args:" section.
        described = [f"        {name}: {info.description}" for name, info in model.model_fields.items()]
        flow_function.__doc__ = (fn.__doc__ or "").rstrip() + "\n\n    Args:\n" + "\n".join(described) + "\n"
        return flow_function

    return decorate


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base(annotation: Any) -> Any:
    """The type a flag parses: ``annotation`` without ``None`` and ``Annotated``."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _base(annotation)
    return annotation


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """A flag for each of ``model``'s fields (``--min-accuracy`` for ``min_accuracy``), with its description
    and default as help; a field without a default is a required flag."""
    for name, info in model.model_fields.items():
        base = _base(info.annotation)
        options: dict[str, Any] = {"help": info.description, "default": None if info.is_required() else info.default}
        if typing.get_origin(base) is Literal:
            options["choices"] = typing.get_args(base)
            options["help"] = f"{info.description} ({', '.join(options['choices'])})"
        elif base in (int, float):
            options["type"] = base
        elif base is dt.date:
            options["type"] = _date
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if "metavar" in extra:
            options["metavar"] = extra["metavar"]
        if info.is_required():
            options["required"] = True
        elif info.default is not None:
            options["help"] = f"{info.description} (default: {info.default})"
        parser.add_argument(_flag(name), **options)


def from_args(model: type[Model], args: argparse.Namespace) -> Model:
    """``model`` from the parsed flags (a flag not given keeps the field's default), or a ``ConfigError``
    naming the flag and what it must be."""
    given = {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}
    try:
        return model(**given)
    except ValidationError as error:
        problem = error.errors()[0]
        flag = _flag(str(problem["loc"][0])) if problem["loc"] else "a flag"
        raise ConfigError(f"{flag} must be {_rule(problem)}, got {problem.get('input')!r}") from None


def _rule(problem: Any) -> str:
    """What a value had to be, in the words the spec's settings use (``imgflow.config.checks``)."""
    bounds = {
        "greater_than_equal": "at least {ge}",
        "less_than_equal": "at most {le}",
        "greater_than": "above {gt}",
        "less_than": "below {lt}",
    }
    if problem["type"] in bounds:
        return bounds[problem["type"]].format(**problem.get("ctx", {}))
    if problem["type"] == "string_too_short":
        return "a non-empty string"
    return str(problem["msg"]).lower().removeprefix("input should be ")
