"""TensorBoard event files for the runs Keras users expect to watch: ``tensorboard --logdir ARTIFACTS``.

Training writes every epoch's scalars (loss, accuracy, their validation values, the learning rate) and
the run's hyperparameters (``imgflow.training.checkpoints.EpochLog``) into its checkpoint folder, which survives a killed run (and
is mirrored to an object-store root every epoch), then ``publish`` copies them into the model's output,
``train/<key>/tensorboard/``. Validation writes its images (the confusion matrix, the most confident
mistakes) into ``validate/<key>/tensorboard/`` (``write_images``).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

EVENTS = "events.out.tfevents."  # TensorBoard's file name prefix
FOLDER = "tensorboard"


def publish(checkpoints: Path, out_dir: Path) -> Path:
    """Copy the event files training wrote in ``checkpoints`` into ``out_dir/tensorboard``."""
    target = out_dir / FOLDER
    target.mkdir(exist_ok=True)
    for path in sorted(checkpoints.glob(f"{EVENTS}*")):
        shutil.copy2(path, target / path.name)
    return target


def write_images(folder: Path, images: Mapping[str, Sequence[bytes] | np.ndarray]) -> None:
    """Write each named image batch (PNG files' bytes, or uint8 arrays [N, H, W, C]) as TensorBoard images."""
    import tensorflow as tf
    from PIL import Image

    writer = tf.summary.create_file_writer(str(folder / FOLDER))
    with writer.as_default():
        for name, batch in images.items():
            if len(batch) == 0:
                continue
            if isinstance(batch, np.ndarray):
                arrays = batch
            else:
                arrays = np.stack([np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in batch])
            tf.summary.image(name, arrays, step=0, max_outputs=len(arrays))
    writer.close()
