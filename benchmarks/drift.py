"""Drift seen, and none imagined: three days of the sample split by date make the champion, then a
fourth day arrives, ordinary, inverted (black on white) or darkened, and each is checked against the
champion's data. Prints every check of the fourth day side by side, whether it was flagged, and what
the drift step cost.

Each variant is a backfill over the same three days plus its fourth (one artifact root, one model: the
three days are cleaned once), with a floor no candidate clears, so the champion stays the first one.

    python benchmarks/drift.py [--per-day 300] [--epochs 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from _timing import timed_json
from PIL import Image

from imgflow.data.synthetic import partitioned_parquet

DAYS = ["2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04"]
VARIANTS = {"ordinary": lambda a: a, "inverted": lambda a: 255 - a, "darkened": lambda a: (a * 0.4).astype(np.uint8)}


def _lakes(root: Path, per_day: int) -> dict[str, Path]:
    """One lake per variant: the same three days (links to one folder each) and its own fourth day."""
    base = partitioned_parquet(root / "days", DAYS, per_day=per_day)
    import pyarrow as pa
    import pyarrow.parquet as pq

    lakes = {}
    fourth = pq.read_table(base / f"date={DAYS[3]}" / "part-0.parquet")
    for name, change in VARIANTS.items():
        lake = root / name
        for day in DAYS[:3]:
            (lake / f"date={day}").mkdir(parents=True)
            os.link(base / f"date={day}" / "part-0.parquet", lake / f"date={day}" / "part-0.parquet")
        images = []
        for data in fourth.column("image").to_pylist():
            buffer = io.BytesIO()
            Image.fromarray(change(np.asarray(Image.open(io.BytesIO(data))))).save(buffer, format="PNG")
            images.append(buffer.getvalue())
        (lake / f"date={DAYS[3]}").mkdir()
        pq.write_table(pa.table({"image": images, "label": fourth.column("label")}), lake / f"date={DAYS[3]}" / "part-0.parquet")
        spec = root / f"{name}.toml"
        spec.write_text(f'name = "digits-by-day"\nsource = "parquet:{lake}"\n')
        lakes[name] = spec
    return lakes


def _backfill(spec: Path, end: str, artifacts: Path, epochs: int, floor: float, env: dict[str, str]) -> tuple[float, dict]:
    command = [sys.executable, "-m", "flows.cli", "backfill", "--dataset", str(spec), "--start", DAYS[0], "--end", end,
               "--artifacts", str(artifacts), "--epochs", str(epochs), "--min-accuracy", str(floor), "--json"]
    return timed_json(command, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-day", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgflow-drift-") as name:
        tmp = Path(name)
        env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "IMGFLOW_CACHE": str(tmp / "cache")}
        env.pop("PREFECT_API_URL", None)
        lakes, artifacts = _lakes(tmp, args.per_day), tmp / "artifacts"
        _, first = _backfill(lakes["ordinary"], DAYS[2], artifacts, args.epochs, 0.0, env)
        print(f"champion {first['version']}: {3 * args.per_day} digits over {DAYS[0]}..{DAYS[2]}, test accuracy {first['metrics']['accuracy']:.4f}")
        rows = {}
        for variant, spec in lakes.items():
            seconds, summary = _backfill(spec, DAYS[3], artifacts, args.epochs, 1.0, env)
            entry = summary["drift"]["checks"][DAYS[3]]
            report = Path(entry["report"])
            checks = {c["name"]: c for c in json.loads(report.with_name("drift.json").read_text())["checks"]}
            built = json.loads(report.with_name("manifest.json").read_text()).get("seconds", 0.0)
            rows[variant] = (checks, DAYS[3] in summary["drift"]["flagged"], built, seconds)
        names = list(next(iter(rows.values()))[0])
        print(f"\nday {DAYS[3]} against the data champion {first['version']} learned from ({args.per_day} new digits):")
        print(f"{'check':18}" + "".join(f"{variant:>26}" for variant in rows))
        for check in names:
            cells = []
            for checks, *_ in rows.values():
                c = checks[check]
                cells.append(f"{c['size']:8.3f} p={c['p_value']:8.2g}{' DRIFT' if c['drifted'] else '      '}")
            print(f"{check:18}" + "".join(f"{cell:>26}" for cell in cells))
        print(f"{'flagged':18}" + "".join(f"{str(flagged):>26}" for _, flagged, _, _ in rows.values()))
        print(f"{'drift step (s)':18}" + "".join(f"{built:>26.2f}" for _, _, built, _ in rows.values()))
        print(f"{'whole backfill (s)':18}" + "".join(f"{seconds:>26.1f}" for *_, seconds in rows.values()))


if __name__ == "__main__":
    main()
