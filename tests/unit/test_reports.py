from pathlib import Path

import numpy as np
from PIL import Image

from imgflow.reporting.reports import confusion_matrix, per_class_metrics, plot_confusion_matrix, plot_training_curves


def test_confusion_matrix_and_per_class_metrics() -> None:
    truth, predicted = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0])
    matrix = confusion_matrix(truth, predicted, 4)  # a class absent from both still has its row
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    rows = per_class_metrics(truth, predicted, ["a", "b", "c"])
    assert rows[0] == {"class": "a", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert rows[1]["precision"] == 2 / 3 and rows[1]["recall"] == 1.0
    assert rows[2] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_plots_are_png_files(tmp_path: Path) -> None:
    plot_confusion_matrix(np.eye(3, dtype=int) * 5, ["a", "b", "c"], tmp_path / "cm.png")
    plot_training_curves({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.5, 0.8]}, tmp_path / "c.png")
    for name in ("cm.png", "c.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width > 300
