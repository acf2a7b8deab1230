"""Reading Parquet a piece at a time, without keeping what was read.

``pq.ParquetFile`` pre-buffers the column chunks it reads by default and keeps them as long as the
file object lives: iterating a 2 GB table batch by batch then holds 2 GB (measured: 1.9 GB of Arrow
memory after reading 200,000 images). Every streaming reader here opens its tables with
``open_parquet`` instead, which reads through a small buffer and keeps nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

_BUFFER = 1 << 20


def open_parquet(path: str | Path, filesystem: Any = None) -> pq.ParquetFile:
    """A Parquet file to read row group by row group, or batch by batch, in bounded memory."""
    return pq.ParquetFile(str(path), filesystem=filesystem, pre_buffer=False, buffer_size=_BUFFER)
