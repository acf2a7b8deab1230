"""The model report page: every section filled from the card, and whatever the data says escaped."""

from __future__ import annotations

from imgflow.data.images import encode_png
from imgflow.registry.model_report import render
from tests.conftest import digit_like

CARD = {
    "name": "pets", "source": "folder:/data/<pets>", "image_shape": [16, 16, 1], "class_names": ["cat", "<script>dog"],
    "metrics": {"accuracy": 0.75, "test_records": 4, "champion_accuracy": None},
    "decision": {"promote": True, "reasons": ["accuracy 0.7500 >= floor 0.5000"]},
    "parity": {"max_abs_diff": 1e-7}, "export": {"opset": 17, "int8": {"exported": False, "accuracy": 0.5}},
    "data_fingerprint": "d" * 64, "model_fingerprint": "m" * 64,
    "lineage": {"train": {"key": "k1", "fingerprint": "f" * 64, "path": "/a/train/k1"}},
}
METRICS = {"per_class": [{"class": "<script>dog", "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2}]}


def test_every_section_is_filled_and_nothing_the_data_says_is_markup() -> None:
    mistake = {"id": "a/<b>.png", "label": "cat", "predicted": "<script>dog", "confidence": 0.875,
               "image": encode_png(digit_like(0))}
    page = render(CARD, METRICS, {"confusion_matrix": encode_png(digit_like(1))}, [mistake])
    assert "<script>" not in page and "&lt;script&gt;dog" in page and "folder:/data/&lt;pets&gt;" in page
    assert "pets {version}" in page and "PROMOTED" in page  # the registry fills in the version
    assert "0.7500" in page and "none" in page and "1.0e-07" in page and "(not exported)" in page
    assert "87.5% sure" in page and page.count("data:image/png;base64,") == 2
    assert "<td>0.6667</td>" in page and "not recorded" in page and "/a/train/k1" in page


def test_a_model_without_mistakes_says_so() -> None:
    page = render({**CARD, "export": {"opset": 17}}, METRICS, {}, [])
    assert "None: every test image was classified correctly." in page and "int8 ONNX accuracy" in page


def test_a_budgeted_models_report_shows_its_race_winner_first() -> None:
    race = [
        {"candidate": "lite0-frozen-128px", "why": "ImageNet <features>", "val_macro_f1": 0.81, "seconds": 40.0, "epochs": 12,
         "rungs": [{"rung": 0, "val_macro_f1": 0.81, "seconds": 40.0, "epochs": 12}], "winner": False},
        {"candidate": "cnn-w16", "why": "from scratch", "val_macro_f1": 0.93, "seconds": 300.0, "epochs": 30,
         "rungs": [{"rung": 0, "val_macro_f1": 0.88, "seconds": 40.0, "epochs": 10}, {"rung": 1, "val_macro_f1": 0.93, "seconds": 260.0, "epochs": 20}],
         "winner": True},
    ]
    training = {"race": race, "winner": {"candidate": "cnn-w16", "reason": "cnn-w16 had the best val_macro_f1 (0.8800) of 2 candidates"},
                "stopped": "out of time"}
    page = render({**CARD, "training": training}, METRICS, {}, [])
    assert "The budget's race" in page and "<th>val_macro_f1</th>" in page
    assert page.index("<b>cnn-w16</b> (won)") < page.index("lite0-frozen-128px")
    assert "0.8800, 0.9300" in page and "training stopped: out of time" in page and "ImageNet &lt;features&gt;" in page
