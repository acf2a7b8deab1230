"""Fuzz: random TOML, and random values for every ``[section] field``, through spec parsing. A spec
is accepted (and then every stage can key its config) or refused with a ``ConfigError`` naming the
setting at fault."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from imgflow.config import SECTIONS, build_run_config
from imgflow.runtime.errors import ConfigError
from imgflow.pipeline import PIPELINE
from imgflow.stages.download import DOWNLOAD
from tests.fuzz.conftest import fuzz_target

scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.integers(-3, 300), st.floats(), st.floats(0, 1), st.text(max_size=12),
    st.sampled_from(["auto", "cnn", "resnet9", "host", "float32", "MobileNetV2", ""]), st.booleans(),
    st.datetimes(), st.dates(), st.times(),
)
values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
FIELDS = {section: list(cls.model_fields) for section, cls in SECTIONS.items()}
names = st.one_of(st.text(max_size=12), st.sampled_from(["pets", "my.model-2", "../up", "a b"]))
sources = st.one_of(st.sampled_from(["sample:digits", "folder:/no/such", "parquet:x.parquet", "tfds:mnist"]), st.text(max_size=20))


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """A spec document: the top-level keys, and sections of known fields (and the odd unknown one)."""
    doc: dict[str, Any] = {}
    for key, strategy in (("source", sources), ("name", names), ("limit", values), ("options", values)):
        if draw(st.booleans()) or key == "source" and draw(st.integers(0, 9)):
            doc[key] = draw(st.one_of(strategy, values))
    for section, fields in FIELDS.items():
        if draw(st.booleans()):
            keys = draw(st.lists(st.one_of(st.sampled_from(fields), st.text(max_size=8)), max_size=4, unique=True))
            doc[section] = {key: draw(values) for key in keys}
    return doc


def _check(path: Path, doc: dict[str, Any] | None) -> None:
    """Parse the spec at ``path``: accepted, and keyed by every stage; or refused naming a setting
    ``doc`` holds (when it is known: random text names nothing in particular)."""
    try:
        cfg = build_run_config(str(path), path.parent / "artifacts")
    except ConfigError as error:
        message = str(error)
        assert message and str(path) in message or "dataset " in message
        if doc is not None and "not valid TOML" not in message and "has no 'source'" not in message:
            named = {*doc, *(key for section in SECTIONS if isinstance(doc.get(section), dict) for key in doc[section])}
            assert any(name and name in message for name in named), message
        return
    DOWNLOAD.key(cfg.download, {"source": "fingerprint"})
    for step in PIPELINE.steps:
        step.stage.key(cfg.of(step.config), {})


@fuzz_target(examples=400)
@given(doc=specs())
def test_a_spec_is_accepted_or_refused_naming_the_setting(doc: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.toml"
        path.write_text(tomli_w.dumps(doc))
        _check(path, doc)


@fuzz_target(examples=200)
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_random_text_as_a_spec_is_accepted_or_refused(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        _check(path, None)
