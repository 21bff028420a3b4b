"""README.md cannot rot: its Python examples run against a real Redis and coordinator (their
output compared with the ```text block after each), its CLI lines parse, its configuration and
dependency tables are complete, and its test command is the one .ci/run calls."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent_sdk.settings import Settings
from coordinator.cli import cli
from coordinator.settings import CoordinatorSettings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int
    end: int


def _blocks() -> list[Block]:
    return [
        Block(m.group(1), m.group(2), README.count("\n", 0, m.start()) + 1, m.end())
        for m in FENCE.finditer(README)
    ]


def _examples() -> list[tuple[Block, str | None]]:
    """Each Python block with the ```text block right after it (its expected output), if any."""
    blocks = _blocks()
    out = []
    for i, block in enumerate(blocks):
        if block.lang != "python":
            continue
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        expected = None
        if nxt is not None and nxt.lang == "text":
            between = README[block.end : README.index("```text", block.end)]
            if not between.strip():
                expected = nxt.code
        out.append((block, expected))
    return out


EXAMPLES = _examples()


def test_readme_has_runnable_examples_with_outputs() -> None:
    assert len(EXAMPLES) >= 6
    assert all(expected is not None for _, expected in EXAMPLES)


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("coordinator")
@pytest.mark.parametrize(
    ("block", "expected"), EXAMPLES, ids=[f"README.md:{b.line}" for b, _ in EXAMPLES]
)
async def test_python_example_runs_and_prints_what_the_readme_says(
    block: Block, expected: str | None, settings: Settings
) -> None:
    env = {
        **os.environ,
        "AGENTBUS_REDIS_URL": settings.url,
        "AGENTBUS_NAMESPACE": settings.namespace,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        block.code,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 80)
    assert proc.returncode == 0, f"README.md:{block.line} failed:\n{err.decode()}"
    assert out.decode() == expected, err.decode()


def _cli_lines() -> list[list[str]]:
    lines = []
    for block in _blocks():
        if block.lang not in ("bash", "sh", "console"):
            continue
        for line in block.code.splitlines():
            words = shlex.split(line, comments=True)
            for start, word in enumerate(words):
                if word == "agentbus":
                    rest = words[start + 1 :]
                    cut = rest.index("&&") if "&&" in rest else len(rest)
                    lines.append(rest[:cut])
    return lines


CLI_LINES = _cli_lines()


def test_readme_shows_the_cli() -> None:
    shown = {words[0] for words in CLI_LINES if words and not words[0].startswith("-")}
    assert set(cli.commands) <= shown | {"--redis-url"}, set(cli.commands) - shown


@pytest.mark.parametrize("argv", CLI_LINES, ids=" ".join)
def test_every_cli_line_in_the_readme_parses(argv: list[str]) -> None:
    # --help last: click parses every argument first, so a wrong command or option is a usage
    # error (exit 2) instead of help.
    result = CliRunner().invoke(cli, [*argv, "--help"])
    assert result.exit_code == 0, result.output


def test_the_readme_test_command_is_what_ci_runs() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    first, second = (line.split("#")[0].strip() for line in _blocks()[0].code.strip().splitlines())
    assert first == "pip install -e . && agentbus demo"
    assert second == "pip install -e '.[test]' && pytest"
    assert any(line.strip() == second for line in run.splitlines())


def _table_rows(after_heading: str) -> list[str]:
    section = README.split(after_heading, 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_configuration_table_lists_every_setting() -> None:
    listed = {
        re.match(r"\| `(AGENTBUS_\w+)`", row).group(1) for row in _table_rows("## Configuration")
    }  # type: ignore[union-attr]
    fields = set(Settings.model_fields) | set(CoordinatorSettings.model_fields)
    expected = {f"AGENTBUS_{name.upper()}" for name in fields}
    assert expected <= listed, expected - listed
    cli_only = listed - expected
    sources = "".join(p.read_text() for p in (ROOT / "coordinator").rglob("*.py"))
    sources += "".join(p.read_text() for p in (ROOT / "agent_sdk").rglob("*.py"))
    for var in cli_only:
        assert var in sources, f"README documents {var}, which no code reads"


def test_configuration_defaults_match_the_code() -> None:
    for row in _table_rows("## Configuration"):
        m = re.match(r"\| `AGENTBUS_(\w+)` \| `([^`]*)` \|", row)
        if not m:
            continue
        name = m.group(1).lower()
        field = Settings.model_fields.get(name) or CoordinatorSettings.model_fields.get(name)
        if field is None or field.default_factory is not None:
            continue
        default = field.default
        if hasattr(default, "get_secret_value"):
            default = default.get_secret_value()
        assert m.group(2) == str(default), f"README says {name}={m.group(2)}, code says {default}"


def test_dependency_table_explains_every_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    section = README.split("## Why each dependency", 1)[1].split("\n## ", 1)[0]
    names = [re.split(r"[\[<>=;! ]", dep, maxsplit=1)[0] for dep in project["dependencies"]]
    for extra in ("embedded", "fast", "otel", "test"):
        names += [
            re.split(r"[\[<>=;! ]", dep, maxsplit=1)[0]
            for dep in project["optional-dependencies"][extra]
        ]
    missing = [
        n for n in names if n not in section and n.removeprefix("opentelemetry") not in section
    ]
    assert not missing, f"README's dependency table does not explain {missing}"
