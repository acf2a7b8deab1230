"""Run parameters are declared once (flows/params.py): the flows' signatures, Prefect's parameter schema
(the deployment form) and the command line's flags all come from the same fields."""

from __future__ import annotations

import argparse

import pytest

from flows.params import BackfillParams, RunParams, TuneParams, add_flags, from_args
from imgflow.runtime.errors import ConfigError


@pytest.mark.parametrize(
    ("flow_name", "model", "flow_only"),
    [("train", RunParams, {"as_of", "source_fingerprint"}), ("backfill", BackfillParams, set()), ("tune", TuneParams, set())],
)
def test_a_flow_takes_its_models_fields_and_prefect_describes_them(flow_name: str, model, flow_only: set[str]) -> None:
    import importlib

    flow = getattr(importlib.import_module(f"flows.{flow_name}"), flow_name)
    schema = flow.parameters.model_dump()
    assert set(schema["properties"]) == set(model.model_fields) | flow_only
    for name, info in model.model_fields.items():
        assert schema["properties"][name]["description"] == info.description
        assert schema["properties"][name].get("default") == (None if info.is_required() else info.default)
    assert set(schema.get("required", [])) == {name for name, info in model.model_fields.items() if info.is_required()}


def test_the_command_lines_flags_are_the_models_fields_with_their_rules() -> None:
    from flows.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command, model in (("run", RunParams), ("plan", RunParams), ("backfill", BackfillParams), ("tune", TuneParams)):
        flags = {a.dest for a in commands[command]._actions} - {"help", "json"}
        assert flags == set(model.model_fields), command
    parser = argparse.ArgumentParser()
    add_flags(parser, RunParams)
    assert from_args(RunParams, parser.parse_args(["--epochs", "3", "--budget", "15m"])) == RunParams(epochs=3, budget="15m")
    with pytest.raises(ConfigError, match=r"--min-accuracy must be at most 1.0, got 1.5"):
        from_args(RunParams, parser.parse_args(["--min-accuracy", "1.5"]))
