"""MkDocs hooks that generate the reference pages from the code, so the docs never retype it.

- ``<!-- imgflow:cli -->``: the help of ``imgflow`` and each of its commands, from ``flows.cli``'s parser.
- ``<!-- imgflow:config -->``: every spec section's fields (``imgflow.config.SECTIONS``) with their type,
  default, rule and the comment written beside them in ``imgflow/config/stages.py``.
- ``<!-- imgflow:datasets -->``: the named dataset specs in ``datasets/``, with their leading comment.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def on_page_markdown(markdown: str, **_: Any) -> str:
    generators = {"cli": _cli, "config": _config, "datasets": _datasets}
    return re.sub(r"<!-- imgflow:(\w+) -->", lambda m: generators[m.group(1)](), markdown)


def _cli() -> str:
    from flows.cli import build_parser

    os.environ["COLUMNS"] = "110"  # argparse wraps its help to the terminal's width
    parser = build_parser()
    parts = ["## imgflow", "", "```text", parser.format_help().rstrip(), "```", ""]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001 - argparse's only way in
    for name, command in subparsers.choices.items():
        parts += [f"## imgflow {name}", "", "```text", command.format_help().rstrip(), "```", ""]
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
        for action in nested:
            for sub, subcommand in action.choices.items():
                parts += [f"### imgflow {name} {sub}", "", "```text", subcommand.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def _comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class's source: the block of ``#`` lines above it and the one beside it."""
    found: dict[str, str] = {}
    block: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("# "))
            continue
        match = re.match(r"\s+(\w+): [^=]+(?:=.*?)?(?:\s+#\s*(.*))?$", line)
        if match and not stripped.startswith(('"', "def ", "@")):
            found[match.group(1)] = " ".join([*block, match.group(2) or ""]).strip()
        block = []
    return found


def _config() -> str:
    from imgflow.config import SECTIONS
    from imgflow.config.checks import expected
    from imgflow.store.fingerprint import KEYLESS

    parts = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        comments = _comments(cls)
        parts += [f"## [{section}]", "", "| field | type | default | rule | what it does |", "|---|---|---|---|---|"]
        for name, field in cls.settings().items():
            default = "required" if field.is_required() else f"`{field.get_default(call_default_factory=True)!r}`"
            rule = cls.rule(name)
            words = rule.words if rule else ""
            key = " Not part of the cache key." if KEYLESS in field.metadata else ""
            cells = [f"`{name}`", expected(hints[name]), default, words, comments.get(name, "") + key]
            parts.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        parts.append("")
    return "\n".join(parts)


def _datasets() -> str:
    rows = ["| name | source | about |", "|---|---|---|"]
    for path in sorted((ROOT / "datasets").glob("*.toml")):
        text = path.read_text()
        comment = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#")).split(". ")[0]
        source = re.search(r'^source = "(.*)"', text, re.M)
        rows.append(f"| `{path.stem}` | `{source.group(1) if source else ''}` | {comment} |")
    return "\n".join(rows) + "\n"
