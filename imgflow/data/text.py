"""Text that travels with an image: a caption, a title, a description.

One set of rules, used everywhere text is read:

- **Cleaning** (``normalize``): the bytes must be UTF-8 (otherwise the record is quarantined as
  ``bad_text``), then Unicode NFC, and every run of whitespace becomes one space, trimmed. An empty
  text is allowed: a record may miss its text, and the model still answers from its image.
- **Tokens** (``TOKEN_RULE``): the text lowercased, then every maximal run of letters and digits.
  ``tokens`` is the rule in Python (for the data-quality report); ``TextEncoder`` is the same rule as
  TensorFlow ops, which is what the model sees: training, validation, the SavedModel's string inputs
  and the token ids fed to the ONNX export all go through that one encoder, so they cannot drift.
- **Vocabulary**: learned from the training split only (``count_tokens`` then ``vocabulary``), written
  one token per line as ``vocabulary.txt`` next to the model. Id 0 is padding (and an empty text), 1
  is any token not in the vocabulary, the vocabulary's tokens follow from 2 in order.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

TOKEN_RULE = "lowercase, then runs of Unicode letters and digits"
_NOT_WORD = re.compile(r"[\W_]+")  # Python's \w is letters, digits and "_": drop the "_" too
_TF_NOT_WORD = r"[^\p{L}\p{N}]+"  # the same in RE2, for TensorFlow
PADDING, UNKNOWN = 0, 1
VOCABULARY_FILE = "vocabulary.txt"


class BadText(ValueError):
    """Text that cannot be used, with a quarantine reason and a detail naming what is wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def normalize(raw: bytes | str | None) -> str:
    """The cleaned text of a record: NFC, single spaces, trimmed; ``""`` for none. ``BadText`` when
    ``raw`` is not UTF-8 (naming the first bad byte and where it is)."""
    if raw is None:
        return ""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = exc.object[exc.start : exc.start + 1].hex()
            raise BadText("bad_text", f"text is not valid UTF-8: byte 0x{bad} at offset {exc.start} ({exc.reason})") from None
    return " ".join(unicodedata.normalize("NFC", raw).split())


def tokens(text: str) -> list[str]:
    """The tokens of a cleaned text (``TOKEN_RULE``), in Python."""
    return [token for token in _NOT_WORD.split(text.lower()) if token]


def vocabulary(counts: Counter[str], size: int, min_count: int = 2) -> list[str]:
    """The ``size`` most frequent tokens seen at least ``min_count`` times, most frequent first (ties
    alphabetically, so the same counts always give the same vocabulary)."""
    ranked = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda item: (-item[1], item[0]))
    return [token for token, _ in ranked[:size]]


def write_vocabulary(words: Sequence[str], path: Path) -> None:
    path.write_text("".join(f"{word}\n" for word in words), encoding="utf-8")


def read_vocabulary(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def tf_tokens(text: Any) -> Any:
    """``TOKEN_RULE`` as TensorFlow ops: a string tensor [N] -> ragged tokens [N, None]."""
    import tensorflow as tf

    lowered = tf.strings.lower(text, encoding="utf-8")
    return tf.strings.split(tf.strings.strip(tf.strings.regex_replace(lowered, _TF_NOT_WORD, " ")))


def count_tokens(texts: Iterable[Any]) -> Counter[str]:
    """Token counts over batches of text (string tensors or arrays of bytes), with the model's rule."""
    counts: Counter[str] = Counter()
    for batch in texts:
        counts.update(token.decode("utf-8") for token in tf_tokens(batch).flat_values.numpy())
    return counts


class TextEncoder:
    """Strings -> int32 token ids [N, length]: the model's view of text, the same in training and
    serving. ``lookup`` is a Keras ``StringLookup`` layer: track it in an export so the vocabulary
    travels inside the SavedModel."""

    def __init__(self, words: Sequence[str], length: int) -> None:
        import keras

        self.length = length
        self.words = list(words)
        if not self.words:
            raise ValueError("a text encoder needs a vocabulary of at least one token")
        self.lookup = keras.layers.StringLookup(vocabulary=self.words, mask_token="", num_oov_indices=1, name="vocabulary")

    @property
    def size(self) -> int:
        """How many ids there are: padding, unknown and the vocabulary."""
        return len(self.words) + 2

    def __call__(self, text: Any) -> Any:
        import tensorflow as tf

        ragged = tf_tokens(tf.convert_to_tensor(text, tf.string))[:, : self.length]
        padded = ragged.to_tensor(default_value="", shape=[None, self.length])
        return tf.cast(self.lookup(padded), tf.int32)

    def ids(self, texts: Sequence[str]) -> Any:
        """Token ids as a numpy array, for ONNX Runtime."""
        return self(list(texts)).numpy()
