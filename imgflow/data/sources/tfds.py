"""``tfds:NAME[:VERSION]``: any image-classification dataset of the tensorflow-datasets catalog.

The image and label features are read from the builder's info (the first ``Image`` feature and the
first ``ClassLabel``), so no per-dataset code is needed. Images are taken undecoded (PNG/JPEG bytes as
TFDS stores them) and decoded by the clean stage like any other source. Options: ``data_dir`` (where
TFDS keeps prepared data; TFDS's own default otherwise), ``image_feature`` and ``label_feature`` to pick
features by name, ``text_feature`` to read a ``Text`` feature (a caption, a title) as each record's text.

A dataset already prepared in ``data_dir`` is read without any network access. One that is not is
downloaded by TFDS, after a check that each of its download hosts (or the proxy in between) accepts
a connection: a host that does not resolve or refuses fails in seconds with what to do (build it
where there is network, point ``data_dir`` at a copy) instead of after minutes of TFDS's own retries.
When output is not a terminal TFDS's progress bars and urllib3's retry warnings stay out of the log.
"""

from __future__ import annotations

import logging
import sys
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from imgflow.data.sources.record import RawRecord, text_option
from imgflow.runtime.errors import SourceError
from imgflow.runtime.network import check_reachable, fetch
from imgflow.store.fingerprint import stable_hash

_FORMAT = "1"


def _pick(features: Mapping[str, Any], kind: type, wanted: str | None, what: str, name: str) -> str:
    if wanted is not None:
        if wanted not in features or not isinstance(features[wanted], kind):
            raise SourceError(f"tfds:{name} has no {what} feature named {wanted!r}; features: {', '.join(features)}")
        return wanted
    for key, feature in features.items():
        if isinstance(feature, kind):
            return key
    raise SourceError(f"tfds:{name} is not an image-classification dataset: it has no {what} feature (features: {', '.join(features)})")


@contextmanager
def _quiet_unless_terminal() -> Iterator[None]:
    """No progress bars, no urllib3 retry warnings, in a log that is not a terminal."""
    if sys.stderr.isatty():
        yield
        return
    import tensorflow_datasets as tfds

    urllib3 = logging.getLogger("urllib3")
    level = urllib3.level
    urllib3.setLevel(logging.ERROR)
    tfds.disable_progress_bar()
    try:
        yield
    finally:
        urllib3.setLevel(level)
        tfds.enable_progress_bar()


class TfdsSource:
    def __init__(self, name: str, version: str | None, options: Mapping[str, Any]) -> None:
        import tensorflow_datasets as tfds

        self.spec = f"tfds:{name}" + (f":{version}" if version else "")
        self.name = name
        try:
            self.builder = tfds.builder(name, version=version, data_dir=options.get("data_dir"))
        except tfds.core.registered.DatasetNotFoundError:
            raise SourceError(f"unknown TFDS dataset {name!r} (from {self.spec}): it is not in the tensorflow-datasets catalog") from None
        except (ValueError, AssertionError) as exc:
            raise SourceError(f"cannot open TFDS dataset {self.spec}: {str(exc).splitlines()[0]}") from None
        features = self.builder.info.features
        self.image_key = _pick(features, tfds.features.Image, options.get("image_feature"), "image", name)
        self.label_key = _pick(features, tfds.features.ClassLabel, options.get("label_feature"), "class label", name)
        self.label_names = list(features[self.label_key].names)
        wanted_text = text_option(options, "text_feature")
        self.text_key = _pick(features, tfds.features.Text, wanted_text, "text", name) if wanted_text else None
        self.has_text = self.text_key is not None

    @classmethod
    def from_spec(cls, rest: str, options: Mapping[str, Any]) -> TfdsSource:
        name, _, version = rest.partition(":")
        if not name:
            raise SourceError("a TFDS source needs a dataset name: tfds:NAME[:VERSION], e.g. tfds:mnist")
        return cls(name, version or None, options)

    def fingerprint(self) -> str:
        checksums = sorted(info.checksum for info in (self.builder.url_infos or {}).values())
        text = [self.text_key] if self.has_text else []
        return stable_hash([_FORMAT, self.builder.info.full_name, checksums, self.image_key, self.label_key, *text])

    def _prepare(self) -> None:
        advice = (
            f"Where there is network, build it with `tfds build {self.name} --data_dir DIR`, copy DIR to "
            f'this machine and name it in the dataset spec: data_dir = "DIR" under [options].'
        )
        prepare = type(self.builder).download_and_prepare
        if not prepare.__module__.startswith("tensorflow_datasets.testing"):  # mock_data fetches nothing
            for url in sorted(self.builder.url_infos or {}):
                check_reachable(url, source=self.spec, advice=advice)
        hosts = ", ".join(sorted({urllib.parse.urlsplit(url).netloc for url in self.builder.url_infos or {}})) or "its hosts"
        with _quiet_unless_terminal():
            fetch(self.builder.download_and_prepare, source=self.spec, host=hosts, advice=advice)

    def records(self) -> Iterator[RawRecord]:
        import tensorflow_datasets as tfds

        if not self.builder.is_prepared():
            self._prepare()
        splits = sorted(self.builder.info.splits.keys()) or ["train", "test"]
        for split in splits:
            dataset = self.builder.as_dataset(split=split, shuffle_files=False, decoders={self.image_key: tfds.decode.SkipDecoding()})
            for index, example in enumerate(tfds.as_numpy(dataset)):
                yield RawRecord(
                    id=f"{self.name}/{split}/{index:07d}",
                    image=bytes(example[self.image_key]),
                    label=self.label_names[int(example[self.label_key])],
                    text=bytes(example[self.text_key]) if self.text_key else None,
                )
