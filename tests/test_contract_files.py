"""The committed JSON Schema files and docs match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas.export import JSON_DIR, WIRE_TYPES, render

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(WIRE_TYPES))
def test_json_schema_file_is_current(name: str) -> None:
    path = JSON_DIR / f"{name}.schema.json"
    assert path.exists(), f"{path} missing: run python -m schemas.export"
    assert path.read_bytes() == render(WIRE_TYPES[name]), (
        f"{path.name} is stale: run python -m schemas.export and commit the result"
    )


def test_protocol_doc_lists_every_key_builder() -> None:
    """Every key pattern in the schemas.keys docstring table appears in docs/PROTOCOL.md."""
    import schemas.keys as keys_module

    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    table = keys_module.__doc__ or ""
    patterns = re.findall(r"^(R:\S+|<ns>:\S+)\s", table, flags=re.MULTILINE)
    assert len(patterns) >= 15
    missing = [p for p in patterns if f"`{p}`" not in doc]
    assert not missing, f"docs/PROTOCOL.md lacks these keys: {missing}"
