"""Does an int8 model keep its accuracy on a CPU without VNNI? The sample's float model, quantized as
export does (static QDQ, per channel, calibrated on 500 digits) with weights in 8 bits and in 7
(``reduce_range``), scored on all 5,000 sample digits on this CPU and on an x86-64 CPU without VNNI:
this one under user-mode QEMU as a Haswell (AVX2, no AVX-512, no VNNI), whose CPUID ONNX Runtime reads
to choose its int8 kernels. Prints each model's accuracy on both side by side, and its drop from the
float model's.

    python benchmarks/int8_isa.py [--model PATH/model.onnx] [--epochs 4]

Without ``--model`` it trains the sample with ``imgflow run`` first. Needs ``qemu-x86_64``
(``apt-get install qemu-user``) for the second column; emulation makes it slow (minutes), not wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from imgflow.data.sources.sample import SampleSource
from imgflow.serving.inference import int8_instructions, quantize_int8

NO_VNNI = "Haswell"  # QEMU's CPU model: AVX2, no AVX-512, no VNNI
CALIBRATION = 500


def _digits() -> tuple[np.ndarray, np.ndarray]:
    images, labels = SampleSource("mnist5k")._arrays()
    return images[..., None].astype(np.float32), labels


def _score(models: list[str]) -> dict[str, float]:
    """Each model's accuracy on the 5,000 digits, on the CPU this process sees."""
    from imgflow.serving.inference import onnx_session

    images, labels = _digits()
    scores = {}
    for path in models:
        session = onnx_session(path)
        predicted = np.concatenate([session.run(None, {"pixels": images[i : i + 500]})[0].argmax(1) for i in range(0, len(images), 500)])
        scores[Path(path).name] = float((predicted == labels).mean())
    return scores


def _quantize(float_path: Path, out: Path, reduce_range: bool) -> Path:
    """Quantized as export quantizes (``quantize_int8``), calibrated on ``CALIBRATION`` digits spread over the sample."""
    images = _digits()[0]
    calibration = images[:: len(images) // CALIBRATION]
    quantize_int8(float_path, out, ({"pixels": batch} for batch in np.array_split(calibration, len(calibration) // 8)), reduce_range)
    return out


def _train(root: Path, epochs: int) -> Path:
    command = [sys.executable, "-m", "flows.cli", "run", "--dataset", "sample:mnist5k", "--artifacts", str(root), "--epochs", str(epochs),
               "--json", "--min-accuracy", "0"]
    subprocess.run(command, check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
    return next((root / "models").glob("*/v1/model.onnx"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a float model.onnx taking 28x28x1 pixels (default: train the sample)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--score", nargs="+", help=argparse.SUPPRESS)  # the emulated half: score these models, print JSON
    args = parser.parse_args()
    if args.score:
        print(json.dumps(_score(args.score)))
        return
    with tempfile.TemporaryDirectory(prefix="imgflow-int8-") as scratch:
        work = Path(scratch)
        float_path = args.model or _train(work / "artifacts", args.epochs)
        models = [str(float_path), str(_quantize(float_path, work / "int8-8bit.onnx", False)), str(_quantize(float_path, work / "int8-7bit.onnx", True))]
        native = _score(models)
        emulated: dict[str, float] = {}
        qemu = shutil.which("qemu-x86_64")
        if qemu:
            result = subprocess.run([qemu, "-cpu", NO_VNNI, sys.executable, __file__, "--score", *models], capture_output=True, text=True,
                                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, check=True)
            emulated = json.loads(result.stdout.strip().splitlines()[-1])
    names = [Path(m).name for m in models]
    here = f"this CPU ({int8_instructions()})"
    there = f"QEMU {NO_VNNI} (AVX2, no VNNI)" if qemu else "no qemu-x86_64: not measured"
    print(f"accuracy on the 5,000 sample digits; drop from the float model in brackets\n{'model':<18}{here:>40}{there:>36}")
    for name in names:
        cells = []
        for scores in (native, emulated):
            cells.append(f"{scores[name]:.4f} ({scores[names[0]] - scores[name]:+.4f})" if name in scores else "-")
        print(f"{name:<18}{cells[0]:>40}{cells[1]:>36}")


if __name__ == "__main__":
    main()
