"""imgflow.data.text: the one set of rules for text (cleaning, tokens, vocabulary, the model's encoder)."""

from collections import Counter

import numpy as np
import pytest

from imgflow.data.text import BadText, TextEncoder, normalize, tokens, vocabulary

TRICKY = ["Hello, World!", "Ça va? ÉCOLE naïve", "snake_case and  dots...x", "日本語のテキスト 123abc", "", "   ",
          "Straße ΣΊΣΥΦΟΣ", "emoji 😀 ok", "a-b c'd", "tab\tnew\nline"]


def test_normalize_makes_nfc_single_spaces_and_refuses_bytes_that_are_not_utf8() -> None:
    assert normalize("  e\u0301te\u0301 \t at\n the  sea ") == "\u00e9t\u00e9 at the sea"  # NFC: one code point each
    assert normalize(None) == "" and normalize(b"") == ""
    assert normalize("caf\u00e9".encode()) == "caf\u00e9"
    with pytest.raises(BadText) as bad:
        normalize(b"caf\xe9 au lait")  # Latin-1, not UTF-8
    assert bad.value.reason == "bad_text" and "0xe9 at offset 3" in bad.value.detail


def test_the_python_tokens_and_the_model_tokens_follow_one_rule() -> None:
    from imgflow.data.text import tf_tokens

    for text in TRICKY:
        model_tokens = [t.decode() for t in tf_tokens([normalize(text)]).flat_values.numpy()]
        assert model_tokens == tokens(normalize(text)), text
    assert tokens("Straße ΣΊΣΥΦΟΣ") == ["straße", "σίσυφος"]
    assert tokens("snake_case x2") == ["snake", "case", "x2"]


def test_vocabulary_keeps_repeated_tokens_most_frequent_first_ties_alphabetical() -> None:
    counts = Counter({"b": 3, "a": 3, "c": 5, "once": 1, "d": 2})
    assert vocabulary(counts, 10) == ["c", "a", "b", "d"]
    assert vocabulary(counts, 2) == ["c", "a"]
    assert vocabulary(counts, 10, min_count=3) == ["c", "a", "b"]


def test_encoder_pads_with_zero_marks_unknown_tokens_one_and_cuts_at_its_length() -> None:
    encoder = TextEncoder(["sun", "snow"], 4)
    ids = encoder.ids(["Sun and SNOW!", "", "snow snow snow snow snow"])
    assert ids.dtype == np.int32 and ids.tolist() == [[2, 1, 3, 0], [0, 0, 0, 0], [3, 3, 3, 3]]
    assert encoder.size == 4
    with pytest.raises(ValueError, match="vocabulary"):
        TextEncoder([], 4)
