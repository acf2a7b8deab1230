"""Large, imbalanced images with no [train] settings: ``imgflow run --budget`` against the handcrafted
baseline (HOG features and an SVM), on the same test split.

The data: four clip-art categories, deliberately imbalanced (signs and symbols, people, animals, plants:
the smallest is 4% of the records), made grayscale and 300x300 from the drawings rendered at 160x160: a
stand-in for a few thousand large grayscale photographs in imbalanced classes, which we do not have.

    .venv/bin/imgflow datasets clipart --size 160 --output data/clipart160.parquet
    python benchmarks/handcrafted.py                 # builds data/photos-proxy.parquet, then both arms
    python benchmarks/handcrafted.py --budget 5m

The baseline is the classical recipe for such data: histograms of oriented gradients (scikit-image's
``hog`` at 128x128, 8x8-pixel cells, 2x2 blocks) and a support-vector machine (scikit-learn's ``SVC``
with an RBF kernel and balanced class weights; C chosen on the validation split), trained on the train
split of imgflow's own shards and scored on their test split. It prints accuracy and balanced
accuracy for both arms.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import timed_json  # noqa: E402 - the benchmarks' shared helper, beside this file

REPO = Path(__file__).resolve().parent.parent
CLASSES = ("signs_and_symbols", "people", "animals", "plants")
SIDE = 300


def build_table(source: Path, out: Path) -> None:
    """The four categories of ``source`` as 300x300 grayscale PNGs, with their labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image, UnidentifiedImageError

    table = pq.read_table(source, columns=["id", "image", "label"])
    keep = [i for i, label in enumerate(table.column("label").to_pylist()) if label in CLASSES]
    ids, images, labels = [], [], []
    for i in keep:
        try:
            picture = Image.open(io.BytesIO(table.column("image")[i].as_py())).convert("L").resize((SIDE, SIDE), Image.BICUBIC)
        except UnidentifiedImageError:
            continue  # a drawing rsvg-convert could not render: clean would quarantine it anyway
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        ids.append(table.column("id")[i].as_py())
        images.append(buffer.getvalue())
        labels.append(table.column("label")[i].as_py())
    pq.write_table(pa.table({"id": ids, "image": images, "label": labels}), out)


def spec(table: Path, folder: Path) -> Path:
    path = folder / "photos-proxy.toml"
    path.write_text(
        f'source = "parquet:{table}"\n\n[clean]\nimage_size = [{SIDE}, {SIDE}]\nchannels = 1\n'
        "test_fraction = 0.2\nval_fraction = 0.1\n\n[gate]\nmin_accuracy = 0.0\n"
    )
    return path


def handcrafted(spec_path: Path, root: Path) -> dict[str, float]:
    """HOG + SVM on the train split of imgflow's shards of ``spec_path``, scored on their test split."""
    from skimage.feature import hog
    from skimage.transform import resize
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.svm import SVC

    from imgflow.data.sources import source_fingerprint
    from imgflow.pipeline.context import open_run
    from imgflow.results import shard_files
    from imgflow.stages.clean import CLEAN
    from imgflow.stages.download import DOWNLOAD
    from imgflow.stages.shard import SHARD
    from imgflow.training.inputs import shard_dataset

    run = open_run(str(spec_path), root)
    cfg, store = run.cfg, run.store
    raw = DOWNLOAD.run(store, cfg.download, {"source": source_fingerprint(cfg.download.source)})
    shards = SHARD.run(store, cfg.shard, {"clean": CLEAN.run(store, cfg.clean, {"raw": raw})})
    shape = tuple(shards.info.image_shape)

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        rows, labels = [], []
        for images, batch_labels in shard_dataset(shard_files(shards, split), shape, 64, training=False).as_numpy_iterator():
            for image in images:
                small = resize(image[..., 0] / 255.0, (128, 128), anti_aliasing=True)
                rows.append(hog(small, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)))
            labels.extend(batch_labels.tolist())
        return np.array(rows), np.array(labels)

    x_train, y_train = features("train")
    x_val, y_val = features("val")
    x_test, y_test = features("test")
    best = max((SVC(C=c, kernel="rbf", class_weight="balanced").fit(x_train, y_train) for c in (1.0, 3.0, 10.0, 30.0)),
               key=lambda model: model.score(x_val, y_val))
    predicted = best.predict(x_test)
    return {"accuracy": float((predicted == y_test).mean()), "balanced_accuracy": float(balanced_accuracy_score(y_test, predicted)),
            "test_records": len(y_test), "C": best.C}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", default=str(REPO / "data" / "photos-proxy.parquet"))
    parser.add_argument("--source", default=str(REPO / "data" / "clipart160.parquet"), help="imgflow datasets clipart --size 160's table")
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--no-run", action="store_true", help="the handcrafted baseline only")
    args = parser.parse_args()

    table = Path(args.table)
    if not table.is_file():
        build_table(Path(args.source), table)
    work = Path(tempfile.mkdtemp(prefix="imgflow-handcrafted-"))
    spec_path = spec(table, work)
    baseline = handcrafted(spec_path, work / "artifacts")
    print(f"HOG + SVM (C={baseline['C']:g}): accuracy {baseline['accuracy']:.4f}, balanced {baseline['balanced_accuracy']:.4f} "
          f"on {baseline['test_records']} test images", flush=True)
    if args.no_run:
        return
    (work / "prefect").mkdir()
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect")}
    seconds, summary = timed_json(
        [sys.executable, "-m", "flows.cli", "run", "--dataset", str(spec_path), "--artifacts", str(work / "run"), "--budget", args.budget, "--json"],
        env, cwd=str(REPO),
    )
    import json

    per_class = json.loads((Path(summary["stages"]["validate"]["path"]) / "metrics.json").read_text())["per_class"]
    balanced = sum(row["recall"] for row in per_class) / len(per_class)  # the mean recall, as scikit-learn's
    print(f"imgflow --budget {args.budget}: accuracy {summary['metrics']['accuracy']:.4f}, balanced {balanced:.4f} "
          f"in {seconds:.0f} s ({summary['decision']})")
    print("\n".join(f"  {line}" for line in summary["budget"]["plan"]))


if __name__ == "__main__":
    main()
