"""How batch prediction reads its input (the run itself is tested on a trained model in integration)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgflow.runtime.errors import ConfigError, SourceError
from imgflow.serving.batch import input_options, input_pieces, piece_inputs
from imgflow.store.roots import open_store
from tests.conftest import digit_like, encode


def test_options_come_from_a_dataset_spec_then_the_flags(tmp_path: Path) -> None:
    spec = tmp_path / "pets.toml"
    spec.write_text('source = "parquet:x"\n[options]\nimage_column = "picture"\nid_column = "name"\n')
    assert input_options() == {}
    assert input_options(str(spec)) == {"image_column": "picture", "id_column": "name"}
    assert input_options(str(spec), image_column="img", id_column=None) == {"image_column": "img", "id_column": "name"}
    with pytest.raises(ConfigError, match="unknown prediction input option"):
        input_options(label_column="y")


def test_a_table_is_read_by_its_configured_columns_and_a_missing_one_is_named(tmp_path: Path) -> None:
    pq.write_table(pa.table({"name": ["x", "y"], "picture": [encode(digit_like(1)), b""]}), tmp_path / "t.parquet")
    total, pieces = input_pieces(f"parquet:{tmp_path / 't.parquet'}", {"image_column": "picture", "id_column": "name"})
    assert total == 2 and [record_id for piece in pieces for record_id, _, _ in piece_inputs(piece)] == ["x", "y"]
    with pytest.raises(SourceError, match="image"):
        input_pieces(f"parquet:{tmp_path / 't.parquet'}")


def test_a_folder_is_read_recursively_in_name_order(tmp_path: Path) -> None:
    for name in ("b/2.png", "a/1.png", ".hidden/3.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(encode(digit_like(0)))
    total, pieces = input_pieces(str(tmp_path))
    assert total == 2 and [record_id for piece in pieces for record_id, _, _ in piece_inputs(piece)] == ["a/1.png", "b/2.png"]
    with pytest.raises(SourceError, match="does not exist"):
        input_pieces(f"folder:{tmp_path / 'nope'}")


def _tiny_version(folder: Path, classes: int = 4, size: int = 16) -> Path:
    """A registered version as the export stage leaves one, as far as prediction reads it: a card and
    a real ONNX model (a convolution, then a dense layer over 4 classes, fixed random weights),
    built with ``onnx.helper`` so the test needs no training."""
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(8, 1, 3, 3)).astype(np.float32)
    dense = rng.normal(scale=0.01, size=(8 * (size - 2) ** 2, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["nchw", "kernel"], ["conv"]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("Flatten", ["relu"], ["flat"]),
            helper.make_node("MatMul", ["flat", "dense"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", size, size, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", classes])],
        [numpy_helper.from_array(kernel, "kernel"), numpy_helper.from_array(dense, "dense")],
    )
    folder.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), folder / "model.onnx")
    card = {"name": "tiny", "version": folder.name, "image_shape": [size, size, 1], "class_names": [f"c{i}" for i in range(classes)]}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def _images(folder: Path, count: int) -> None:
    for index in range(count):
        (folder / f"{index % 3}").mkdir(parents=True, exist_ok=True)
        (folder / f"{index % 3}" / f"{index:03d}.png").write_bytes(encode(digit_like(index)))
    (folder / "1" / "broken.png").write_bytes(encode(digit_like(0))[:40])


def test_pieces_cover_the_input_in_order_with_the_ids_of_one_read(tmp_path: Path) -> None:
    """A folder is cut into slices of its sorted files; a table into runs of row groups, never
    splitting one, with each record's row number (its id without an id column) as one read gives."""
    _images(tmp_path / "folder", 20)
    total, pieces = input_pieces(str(tmp_path / "folder"), size=6)
    assert total == 21 and [len(p.files) for p in pieces] == [6, 6, 6, 3]
    _, whole = input_pieces(str(tmp_path / "folder"))
    assert [i for p in pieces for i in piece_inputs(p)] == list(piece_inputs(whole[0]))

    table = pa.table({"image": [encode(digit_like(i)) for i in range(25)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=4)
    total, pieces = input_pieces(f"parquet:{tmp_path / 't.parquet'}", size=10)
    assert total == 25 and [p.groups for p in pieces] == [(0, 1, 2), (3, 4, 5), (6,)]
    ids = [record_id for p in pieces for record_id, _, _ in piece_inputs(p)]
    assert ids == [f"t.parquet#{i}" for i in range(25)]


def test_a_pool_of_workers_writes_what_one_process_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pieces run on two worker processes, each with its own ONNX Runtime session (one thread),
    and the output is byte for byte one process's (one session using every core); a broken image is
    an error row wherever it falls."""
    import imgflow.serving.batch as predict_module
    from imgflow.serving.batch import PredictConfig, predict

    version = _tiny_version(tmp_path / "v1")
    _images(tmp_path / "images", 60)
    monkeypatch.setattr(predict_module, "CHUNK_IMAGES", 16)
    outputs = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("IMGFLOW_WORKERS", workers)
        summary = predict(str(tmp_path / "images"), version, tmp_path / f"{workers}.parquet", PredictConfig(batch_size=5))
        assert (summary["rows"], summary["predicted"], summary["errors"]) == (61, 60, 1)
        outputs[workers] = (tmp_path / f"{workers}.parquet").read_bytes()
    assert outputs["1"] == outputs["2"]
    rows = pq.read_table(tmp_path / "2.parquet").to_pylist()
    assert [r["id"] for r in rows][:3] == ["0/000.png", "0/003.png", "0/006.png"]
    assert {r["id"]: r["error"] for r in rows if r["error"]} == {"1/broken.png": rows[[r["id"] for r in rows].index("1/broken.png")]["error"]}
    assert {r["label"] for r in rows if not r["error"]} <= {"c0", "c1", "c2", "c3"}
    assert all(r["top_k"][0]["probability"] == r["probability"] for r in rows if not r["error"])


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_dask_cluster_predicts_from_an_s3_root_what_one_process_predicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_root: str
) -> None:
    """With ``IMGFLOW_TASK_RUNNER=dask:ADDRESS`` the ``predict`` flow's pieces of a table on the bucket
    run on the Dask workers (separate processes), which pull the model version from the bucket into
    their own mirror, as a worker on another machine would; the output is byte for byte one process's."""
    import shutil

    import pyarrow.fs as pafs
    from distributed import Client, LocalCluster, get_task_stream

    import imgflow.serving.batch as predict_module
    from flows.predict import predict as predict_flow
    from imgflow.serving.batch import PredictConfig, predict

    with open_store(s3_root).models("tiny") as root:  # registered on the bucket, as training registers
        version = root / "models" / "tiny" / "v1"
        shutil.copytree(_tiny_version(tmp_path / "v1"), version)
    images = [encode(digit_like(i)) for i in range(70)]
    images[33] = b"not an image"
    filesystem, path = pafs.FileSystem.from_uri(f"{s3_root}/batches/today.parquet")
    with filesystem.open_output_stream(path) as sink:
        pq.write_table(pa.table({"id": [f"photo-{i}" for i in range(70)], "image": images}), sink, row_group_size=8)
    spec = f"parquet:{s3_root}/batches/today.parquet"
    monkeypatch.setattr(predict_module, "CHUNK_IMAGES", 16)
    monkeypatch.setenv("IMGFLOW_WORKERS", "1")
    alone = predict(spec, version, tmp_path / "alone.parquet", PredictConfig(batch_size=5), root=s3_root)

    worker_mirror = tmp_path / "worker-mirror"
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                       env={"IMGFLOW_CACHE": str(worker_mirror)}) as cluster, Client(cluster) as client):
        monkeypatch.setenv("IMGFLOW_TASK_RUNNER", f"dask:{cluster.scheduler_address}")
        with get_task_stream(client) as stream:
            spread = predict_flow(input=spec, output=str(tmp_path / "spread.parquet"), artifacts=s3_root, name="tiny", model="v1", batch_size=5)
    pieces = [task for task in stream.data if task["key"].startswith("predict_piece")]
    assert len(pieces) == 5 and len({task["worker"] for task in pieces}) == 2, "five pieces (16 rows: two row groups each), both workers"
    assert (spread["rows"], spread["errors"]) == (alone["rows"], alone["errors"]) == (70, 1)
    assert (tmp_path / "spread.parquet").read_bytes() == (tmp_path / "alone.parquet").read_bytes()
    pulled = list(worker_mirror.glob("*/models/tiny/v1/model.onnx"))
    assert len(pulled) == 1 and pulled[0].read_bytes() == (version / "model.onnx").read_bytes()
