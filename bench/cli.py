"""The command: ``python -m bench [--quick] [--only GROUPS] [--json PATH] ...``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import machine, report
from bench.common import Sizes
from bench.procs import pick_loop, run
from bench.servers import NatsServer, RedisServer, nats_available
from bench.stats import Row, merge_runs

__all__ = ["Context", "main", "results_path"]

log = logging.getLogger("bench")

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
#: Where ``--quick`` writes unless told: a smoke run never replaces the published results.
QUICK_JSON = DEFAULT_JSON.with_name("quick.json")
GROUPS = (
    "raw", "registry", "messaging", "failure", "fleet", "scaling", "tracing", "host", "plugins",
    "gateway",
)  # fmt: skip


@dataclasses.dataclass
class Context:
    """What every benchmark group gets."""

    url: str
    sizes: Sizes
    loop: str
    nats_url: str | None
    rows: list[Row]
    raw: dict[str, Any]  # baselines by name, shared between groups
    details: dict[str, Any]  # anything else for the JSON file

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        log.info("%s: %s", row.title, row.value.text() if row.value else row.note)
        return row


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    p.add_argument("--only", default="", help=f"comma list of groups: {','.join(GROUPS)}")
    p.add_argument(
        "--json",
        type=Path,
        help="results file (default bench/results/latest.json; with --quick, quick.json)",
    )
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    p.add_argument("--samples", type=int, help="sequential latency samples")
    p.add_argument("--messages", type=int, help="messages per throughput run")
    p.add_argument("--agents", type=int, help="fleet and discovery size")
    p.add_argument("--duration", type=float, help="heartbeat fleet window, seconds")
    p.add_argument("--kills", type=int, help="failure detection: agents killed")
    p.add_argument("--scaling", help="comma list of fleet sizes for the scaling curves")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help=f"run {','.join(REPEATABLE)} this many times; report the median run of each figure",
    )
    p.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    p.add_argument(
        "--write-docs",
        type=Path,
        metavar="MD",
        help="replace the generated results block of this Markdown file (docs/BENCHMARKS.md)",
    )
    p.add_argument(
        "--docs-from",
        type=Path,
        metavar="JSON",
        help="only regenerate --write-docs from an existing results file, run nothing",
    )
    p.add_argument("--no-nats", action="store_true", help="skip the NATS peer")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _sizes(args: argparse.Namespace) -> Sizes:
    sizes = Sizes.quick() if args.quick else Sizes()
    changes: dict[str, Any] = {}
    for name in ("samples", "messages", "agents", "duration", "kills"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.scaling:
        changes["scaling"] = tuple(int(x) for x in args.scaling.split(","))
    return dataclasses.replace(sizes, **changes)


GroupFn = Callable[[Context], Awaitable[None]]


def _groups() -> dict[str, GroupFn]:
    from bench import groups
    from bench.gateway_group import gateway_group
    from bench.host import host_group
    from bench.plugins import plugins_group

    return {
        "raw": groups.raw_group,
        "registry": groups.registry_group,
        "messaging": groups.messaging_group,
        "failure": groups.failure_group,
        "fleet": groups.fleet_group,
        "scaling": groups.scaling_group,
        "tracing": groups.tracing_group,
        "host": host_group,
        "plugins": plugins_group,
        "gateway": gateway_group,
    }


#: Groups that ``--repeat`` runs again (the others aggregate long runs on their own).
REPEATABLE = ("raw", "registry", "messaging", "tracing")


async def _run_all(ctx: Context, selected: list[str], repeat: int = 1) -> None:
    passes: list[list[Row]] = []
    for n in range(repeat):
        ctx.rows = []
        names = [g for g in selected if n == 0 or g in REPEATABLE]
        if names:
            await _run_groups(ctx, names, f"pass {n + 1}")
            passes.append(ctx.rows)
    ctx.rows = merge_runs(passes)


async def _run_groups(ctx: Context, selected: list[str], label: str) -> None:
    fns = _groups()
    for name in selected:
        t0 = time.monotonic()
        load = machine.loadavg()
        try:
            await fns[name](ctx)
        except Exception as e:  # one broken group must not hide the others' numbers
            log.exception("group %s failed", name)
            ctx.add(Row(key=f"{name}.error", title=f"[{name}] failed", value=None, note=repr(e)))
        ctx.details.setdefault("groups", {})[f"{name} ({label})"] = {
            "seconds": round(time.monotonic() - t0, 1),
            "loadavg_before": load,
            "loadavg_after": machine.loadavg(),
        }


def results_path(given: Path | None, *, quick: bool) -> Path:
    """Where the results go: ``given``, else ``latest.json``, or ``quick.json`` for a smoke run
    (which must not replace the published results)."""
    if given is not None:
        return given
    return QUICK_JSON if quick else DEFAULT_JSON


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.json = results_path(args.json, quick=args.quick)
    if args.docs_from:
        if not args.write_docs:
            print("--docs-from needs --write-docs", file=sys.stderr)
            return 2
        report.update_doc(args.write_docs, json.loads(args.docs_from.read_text()))
        return 0
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    sizes = _sizes(args)
    loop = pick_loop(args.loop)
    selected = [g for g in args.only.split(",") if g] or list(GROUPS)
    unknown = set(selected) - set(GROUPS)
    if unknown:
        print(f"unknown groups: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    info = machine.describe(loop)
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started = time.monotonic()
    with RedisServer() as server:
        info["redis_server"] = machine.version_of(server.binary)  # the one started, not PATH's
        nats = NatsServer().start() if nats_available() and not args.no_nats else None
        try:
            ctx = Context(server.url, sizes, loop, nats.url if nats else None, [], {}, {})
            run(_run_all(ctx, selected, args.repeat), loop)
        finally:
            if nats:
                nats.stop()
    info["loadavg_end"] = machine.loadavg()
    info["command"] = command
    info["seconds"] = round(time.monotonic() - started, 1)
    info["sizes"] = dataclasses.asdict(sizes)
    print(
        f"agentbus benchmarks  {info['date']}  loop={loop}  load {info['loadavg_start']} → "
        f"{info['loadavg_end']}  ({info['seconds']} s)"
    )
    print(report.table(ctx.rows))
    if args.markdown:
        print()
        print(report.markdown(ctx.rows))
    raw = {k: v.as_dict() if hasattr(v, "as_dict") else v for k, v in ctx.raw.items()}
    report.write_json(args.json, info, ctx.rows, {"details": ctx.details, "raw": raw})
    print(f"\nwritten: {args.json}")
    if args.write_docs:
        report.update_doc(args.write_docs, json.loads(args.json.read_text()))
        print(f"updated: {args.write_docs}")
    return 0
