"""Data-stage throughput: clean (images/s) and shard writing (MB/s) against the disk's raw sequential
write speed, measured side by side in one run.

The corpus is ``imgflow.data.synthetic.dirty_folder``: real MNIST digits as PNG, JPEG, GIF, BMP and WebP in
four modes and three sizes, with broken files mixed in, so clean pays for every decode path. Shard
throughput counts the TFRecord bytes the stage writes; the raw write is the same number of bytes in
1 MiB blocks to the same disk, buffered (like the shard writer) and buffered + fsync.

    python benchmarks/data_throughput.py [--images N] [--repeat R] [--shapes 28x28x1,128x128x3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from imgflow.config import CleanConfig, DownloadConfig, ShardConfig
from imgflow.data.sources import source_fingerprint
from imgflow.data.synthetic import dirty_folder
from imgflow.stages.clean import CLEAN
from imgflow.stages.download import DOWNLOAD
from imgflow.stages.shard import SHARD
from imgflow.store.artifacts import ArtifactStore, StageResult


def raw_write(folder: Path, size: int, sync: bool) -> float:
    """Seconds to write ``size`` bytes sequentially in 1 MiB blocks (and fsync them if ``sync``)."""
    block = os.urandom(1 << 20)
    path = folder / "raw.bin"
    started = time.perf_counter()
    with path.open("wb") as out:
        for offset in range(0, size, len(block)):
            out.write(block[: min(len(block), size - offset)])
        if sync:
            out.flush()
            os.fsync(out.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000, help="real digits in the corpus (at most 5,000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions; the median is printed")
    parser.add_argument("--shapes", default="28x28x1,128x128x3", help="clean to these HxWxC shapes, one measurement each")
    args = parser.parse_args()
    import tensorflow  # noqa: F401  (imported once here, so the shard timings are the stage's own work)

    with tempfile.TemporaryDirectory(prefix="imgflow-bench-") as tmp:
        root = Path(tmp)
        corpus = dirty_folder(root / "corpus", args.images)
        store = ArtifactStore(root / "artifacts")
        download_config = DownloadConfig(source=f"folder:{corpus.root}")
        raw = DOWNLOAD.run(store, download_config, {"source": source_fingerprint(download_config.source)})
        print(f"corpus: {corpus.files} files in mixed formats, modes and sizes; median of {args.repeat} runs")
        for shape in args.shapes.split(","):
            height, width, channels = (int(n) for n in shape.split("x"))
            measure(root, store, raw, CleanConfig(image_size=(height, width), channels=channels), args.repeat)


def measure(root: Path, store: ArtifactStore, raw: StageResult, clean_config: CleanConfig, repeat: int) -> None:
    timings: dict[str, list[float]] = {"clean": [], "shard": [], "raw": [], "raw_fsync": []}
    for _ in range(repeat):
        started = time.perf_counter()
        clean = CLEAN.run(store, clean_config, {"raw": raw}, force=True)
        timings["clean"].append(time.perf_counter() - started)
        started = time.perf_counter()
        shards = SHARD.run(store, ShardConfig(), {"clean": clean}, force=True)
        timings["shard"].append(time.perf_counter() - started)
        shard_bytes = sum(p.stat().st_size for p in Path(shards.path).glob("*.tfrecord"))
        timings["raw"].append(raw_write(root, shard_bytes, sync=False))
        timings["raw_fsync"].append(raw_write(root, shard_bytes, sync=True))
    median = {name: statistics.median(values) for name, values in timings.items()}
    records, mb = clean.info.records_in, shard_bytes / 1e6
    print(f"\ncleaned to {'x'.join(map(str, clean.info.image_shape))}: {clean.info.kept} kept, "
          f"{clean.info.quarantined} quarantined")
    print(f"  clean:     {records / median['clean']:8.0f} images/s ({median['clean']:.2f} s: decode, check, convert, dedupe, split, write)")
    print(f"  shard:     {mb / median['shard']:8.1f} MB/s     ({median['shard']:.2f} s for {mb:.1f} MB of TFRecords, "
          f"{clean.info.kept / median['shard']:.0f} records/s)")
    print(f"  raw write: {mb / median['raw']:8.1f} MB/s     (same bytes, 1 MiB blocks, buffered); with fsync "
          f"{mb / median['raw_fsync']:.1f} MB/s")
    print(f"  ratio shard / raw write: {median['raw'] / median['shard']:.3f} buffered, {median['raw_fsync'] / median['shard']:.3f} fsync'd")

if __name__ == "__main__":
    main()
