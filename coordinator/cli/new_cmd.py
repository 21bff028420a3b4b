"""``agentbus new NAME``: scaffold a plugin (``coordinator.plugins.scaffold``)."""

from __future__ import annotations

from pathlib import Path

import click

from coordinator.cli.base import fail
from coordinator.plugins.scaffold import scaffold
from schemas.errors import InvalidInput

__all__ = ["new"]


@click.command("new", short_help="Create a plugin from a template.")
@click.argument("name")
@click.option("--role", help="The agents' role [default: NAME].")
@click.option(
    "--dir",
    "parent",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    show_default=True,
    help="Where to create it (a watched plugin directory: it goes live by itself).",
)
def new(name: str, role: str | None, parent: Path) -> None:
    """Create the plugin NAME in DIR/NAME: manifest.yaml, agent.py (its handlers), README.md
    and tests that pass as generated (`pytest DIR/NAME/tests`)."""
    try:
        target = scaffold(name, role=role, parent=parent)
    except InvalidInput as e:
        fail(e)
    click.echo(f"created {target}")
    click.echo(f"  test it:  pytest {target / 'tests'}")
    click.echo(f"  run it:   agentbus run --plugins {parent}")
