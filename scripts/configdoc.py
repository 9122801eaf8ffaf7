"""Regenerate the reference tables of docs/configuration.md from the settings model.

python scripts/configdoc.py          # rewrite the tables
python scripts/configdoc.py --check  # exit 1 if the file is out of date (the tests run this)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from clarion.settings import NamespaceOptions, Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: {name} -->"
END = "<!-- END GENERATED: {name} -->"


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(section)"
    else:
        value = field.default
    if value is None:
        return "unset"
    return f"`{json.dumps(value)}`"


def table(model: type[BaseModel], prefix: str, env_prefix: str) -> str:
    rows = ["| key | default | environment | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        default = _default(field)
        if default == "(section)":
            continue
        if name == "namespaces":
            continue
        env = f"`{env_prefix}{name.upper()}`" if env_prefix else "—"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {default} | {env} | {description} |")
    return "\n".join(rows)


def sections() -> dict[str, type[BaseModel]]:
    """Top-level keys whose value is a table of its own (``[limits]``, ...)."""
    found = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found[name] = annotation
    return found


def render(text: str) -> str:
    tables = {
        "top": table(Settings, "", "CLARION_"),
        "namespace": table(NamespaceOptions, "", ""),
    }
    for name, model in sections().items():
        key = name if name != "limits" else "limits"
        tables[key] = table(model, f"{name}.", f"CLARION_{name.upper()}__")
    for name, body in tables.items():
        begin, end = BEGIN.format(name=name), END.format(name=name)
        if begin not in text:
            text = text.rstrip("\n") + f"\n\n## `[{name}]`\n\n{begin}\n{end}\n"
        start = text.index(begin) + len(begin)
        stop = text.index(end)
        text = text[:start] + "\n" + body + "\n" + text[stop:]
    return text


def main() -> int:
    current = DOC.read_text()
    fresh = render(current)
    if "--check" in sys.argv:
        if fresh != current:
            sys.stderr.write("docs/configuration.md is out of date: run scripts/configdoc.py\n")
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
