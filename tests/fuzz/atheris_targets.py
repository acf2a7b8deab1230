"""Coverage-guided fuzzing with atheris (libFuzzer) for ``make fuzz``: the same promises as the
Hypothesis targets beside it, driven by what code the inputs reach rather than by a strategy.

    python -m tests.fuzz.atheris_targets TARGET [libFuzzer flags, e.g. -max_total_time=100]

Targets:
  image    any bytes through ``probe`` and ``decode``: pixels, or ``BadImage`` with a known reason;
  spec     any bytes as a dataset spec file: a run config, or a ``ConfigError`` naming the file;
  archive  any bytes as an ``archive:`` source: records, or a ``SourceError``.

Each starts from a seed corpus of valid inputs (the image formats and modes the Hypothesis target
mutates, the bundled specs, small zip and tar archives), written to a temporary folder. libFuzzer's
last line ("Done N runs in S second(s)") says how many inputs were tried; a crash leaves the input in
``crash-*`` in the working folder and exits non-zero. Rerun one with
``python -m tests.fuzz.atheris_targets TARGET crash-...``; a crash found becomes a regular test.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import atheris

from imgflow.config import build_run_config
from imgflow.data.images import BadImage, decode, read_header
from imgflow.data.sources import open_source
from imgflow.data.sources.archive import ArchiveSource  # noqa: F401  (loaded now, so that it is instrumented)
from imgflow.runtime.errors import ConfigError, SourceError
from tests.conftest import digit_like, encode

LIMIT = 1 << 22  # as in test_fuzz_images: a declared 4-megapixel image still decodes quickly
REASONS = {"empty", "not_an_image", "truncated", "undecodable", "too_large"}
SCRATCH = Path(tempfile.mkdtemp(prefix="imgflow-atheris-"))


def image(data: bytes) -> None:
    for run in (lambda: read_header(data, LIMIT), lambda: decode(data, (8, 8), 3, LIMIT)):
        try:
            run()
        except BadImage as bad:
            if bad.reason not in REASONS or not bad.detail:
                raise AssertionError(f"reason {bad.reason!r}, detail {bad.detail!r}") from bad


def spec(data: bytes) -> None:
    path = SCRATCH / "spec.toml"
    path.write_bytes(data)
    try:
        build_run_config(str(path), SCRATCH / "artifacts")
    except ConfigError as error:
        if str(path) not in str(error) and "dataset " not in str(error):
            raise AssertionError(f"the refusal does not name the spec: {error}") from error


def archive(data: bytes) -> None:
    path = SCRATCH / "data.archive"
    path.write_bytes(data)
    try:
        records = list(open_source(f"archive:{path}#sha256={hashlib.sha256(data).hexdigest()}").records())
    except SourceError as error:
        assert str(error)
        return
    assert all(isinstance(r.id, str) and isinstance(r.image, bytes) and isinstance(r.label, str) for r in records)
    "".join(r.id + r.label for r in records).encode("utf-8")  # text that Parquet takes: no lone surrogates


def _image_seeds() -> list[bytes]:
    from tests.fuzz.test_fuzz_images import SEEDS

    return SEEDS


def _spec_seeds() -> list[bytes]:
    return [path.read_bytes() for path in sorted(Path("datasets").glob("*.toml"))]


def _archive_seeds() -> list[bytes]:
    files = {f"top/{'ab'[i % 2]}/{i}.png": encode(digit_like(i, size=8)) for i in range(4)}
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as out:
        for name, payload in files.items():
            out.writestr(name, payload)
    seeds = [zipped.getvalue()]
    for mode in ("w", "w:gz"):
        tarred = io.BytesIO()
        with tarfile.open(fileobj=tarred, mode=mode) as out:
            for name, payload in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                out.addfile(info, io.BytesIO(payload))
        seeds.append(tarred.getvalue())
    return seeds


TARGETS: dict[str, tuple[Callable[[bytes], None], Callable[[], list[bytes]]]] = {
    "image": (image, _image_seeds),
    "spec": (spec, _spec_seeds),
    "archive": (archive, _archive_seeds),
}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.atheris_targets {{{','.join(TARGETS)}}} [libFuzzer flags]")
    target, seeds = TARGETS[argv[1]]
    flags = argv[2:]
    if not any(not flag.startswith("-") for flag in flags):  # no corpus or crash file named: the seeds
        corpus = SCRATCH / "corpus"
        corpus.mkdir()
        for number, seed in enumerate(seeds()):
            (corpus / f"seed-{number}").write_bytes(seed)
        flags.append(str(corpus))
    atheris.instrument_all()  # coverage of every loaded module: imgflow, Pillow, tomllib, tarfile, zipfile
    atheris.Setup([argv[0], *flags], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
