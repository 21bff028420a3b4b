"""The committed JSON Schema files and docs match the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from schemas.agent import MAX_RECORD_BYTES, AgentCard, Announce, Leave
from schemas.envelope import Envelope
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
    patterns = re.findall(r"^(R:\S+|T:\S+|<ns>:\S+)\s", table, flags=re.MULTILINE)
    assert len(patterns) >= 15
    missing = [p for p in patterns if f"`{p}`" not in doc]
    assert not missing, f"docs/PROTOCOL.md lacks these keys: {missing}"


PROTOCOL = (ROOT / "docs" / "PROTOCOL.md").read_text()


def _section(doc: str, heading: str) -> str:
    return doc.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def test_protocol_doc_links_every_json_schema() -> None:
    """Each exported schema is linked from docs/PROTOCOL.md, and each linked one exists."""
    linked = set(re.findall(r"\(\.\./schemas/json/([a-z-]+)\.schema\.json\)", PROTOCOL))
    assert linked == set(WIRE_TYPES), (set(WIRE_TYPES) - linked, linked - set(WIRE_TYPES))


def test_protocol_doc_lists_every_error_code() -> None:
    from agent_sdk.messaging.dispatch import MAX_DELIVERIES_CODE
    from schemas.errors import ErrorCode

    rows = re.findall(r"^\| `([a-z_]+)` \|", _section(PROTOCOL, "## Error codes"), re.MULTILINE)
    assert sorted(rows) == sorted({c.value for c in ErrorCode} | {MAX_DELIVERIES_CODE})


def _bounds(model: type[BaseModel], field: str) -> list[int]:
    """The numeric bounds pydantic checks on ``model.field`` (lengths, ranges)."""
    found = []
    for meta in model.model_fields[field].metadata:
        for attr in ("min_length", "max_length", "ge", "le", "gt", "lt"):
            value = getattr(meta, attr, None)
            if isinstance(value, int) and not (attr == "min_length" and value <= 1):
                found.append(value)
    return found


#: (model, field, text that starts the cell naming it in the Limits table)
_LIMITED = [
    (Envelope, "id", "envelope `id`"),
    (Envelope, "type", "envelope `id`, `type`"),
    (Envelope, "sender", "envelope `id`, `type`, `sender`"),
    (Envelope, "correlation_id", "envelope `correlation_id`"),
    (Envelope, "target", "envelope `target`"),
    (Envelope, "reply_to", "envelope `reply_to`"),
    (AgentCard, "version", "card `version`"),
    (AgentCard, "description", "card `description`"),
    (AgentCard, "capabilities", "card `capabilities`"),
    (AgentCard, "tags", "card `capabilities`, `tags`"),
    (AgentCard, "metadata", "card `metadata`"),
    (AgentCard, "region", "card `region`"),
    (AgentCard, "host", "card `region`, `host`"),
    (AgentCard, "max_concurrency", "card `max_concurrency`"),
    (Announce, "instance_id", "`instance_id`"),
    (Announce, "heartbeat_ms", "`heartbeat_ms`"),
    (Announce, "ttl_ms", "`ttl_ms`"),
    (Leave, "reason", "leave `reason`"),
]


@pytest.mark.parametrize(("model", "field", "row"), _LIMITED, ids=lambda v: str(v)[:24])
def test_limits_table_states_each_bound_the_models_check(
    model: type[BaseModel], field: str, row: str
) -> None:
    section = _section(PROTOCOL, "## Limits")
    (line,) = [x for x in section.splitlines() if x.startswith(f"| {row}")]
    bounds = _bounds(model, field)
    assert bounds, f"{model.__name__}.{field} has no bound: fix the test"
    for bound in bounds:
        assert str(bound) in line or f"{bound:,}" in line, (line, bound)


def test_limits_table_states_the_record_size() -> None:
    assert f"{MAX_RECORD_BYTES:,} bytes" in _section(PROTOCOL, "## Limits")


def _slug(heading: str, seen: dict[str, int]) -> str:
    """GitHub's anchor for a heading (lower case, punctuation dropped, spaces to hyphens)."""
    base = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {_slug(h, seen) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(doc: Path) -> None:
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.MULTILINE | re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"


def test_architecture_page_is_linked() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/ARCHITECTURE.md)" in readme
    assert "(ARCHITECTURE.md)" in PROTOCOL
