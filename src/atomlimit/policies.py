"""Limits declared in a TOML file, validated by the specs, reloaded atomically.

A policy file names each limit once, in a ``[limits.NAME]`` table, and may
give plans their own values in ``[tiers.TIER.NAME]`` tables::

    [defaults]
    on_backend_error = "deny"

    [limits.api]
    rate = "500/minute"
    on_backend_error = "allow"

    [limits.ai]
    kind = "spend_cap"
    limit = "100.00"
    currency = "AUD"
    window = "day"
    tz = "Australia/Sydney"

    [tiers.pro.api]
    rate = "5000/minute"

[`load`][atomlimit.policies.load] reads it into a
[`Policies`][atomlimit.policies.Policies]: a read-only mapping from each name
to an ordinary [`RateLimit`][atomlimit.RateLimit],
[`SpendCap`][atomlimit.SpendCap] or [`Concurrency`][atomlimit.Concurrency],
built by the spec itself, so a file accepts exactly what code does. A bad
file raises [`InvalidInput`][atomlimit.errors.InvalidInput] naming the file,
the table and the field: ``policies.toml: [limits.api] limit: must be at
least 1``.

[`Policies.reload`][atomlimit.policies.Policies.reload] reads the file again
and swaps the whole set in one reference assignment; a file that fails keeps
the old set. Every read of the live object sees the current set, and
[`Policies.current`][atomlimit.policies.Policies.current] hands out one
immutable [`PolicySet`][atomlimit.policies.PolicySet], so code that reads
several limits for one request reads them from one file. See docs/policies.md.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import tomllib
from collections.abc import Callable, ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Final

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from atomlimit._errors import InvalidInput
from atomlimit._inputs import show
from atomlimit._rates import parse_rate
from atomlimit._windows import UNIT_LENGTHS
from atomlimit.specs import MAX_NAME, Concurrency, FailurePolicy, RateLimit, Spec, SpendCap

__all__ = [
    "KINDS",
    "MAX_FILE_BYTES",
    "MAX_LIMITS",
    "MAX_TIERS",
    "Policies",
    "PolicySet",
    "load",
    "parse",
]

MAX_FILE_BYTES = 1024 * 1024
"""Largest policy file, in bytes; checked before it is parsed."""
MAX_LIMITS = 1_000
"""Most limits one file declares in ``[limits]``."""
MAX_TIERS = 64
"""Most tiers one file declares in ``[tiers]``."""
MAX_WATCHERS = 64
"""Most callbacks one [`Policies`][atomlimit.policies.Policies] calls after a reload."""
MAX_DOTS_PER_LINE = 64
"""Most ``.`` on one line of a policy file.

Python's TOML parser spends time and memory quadratic in the parts of one
dotted key (``a.a.a. ... = 1``): 10,000 parts take most of a second and
400 MB. A dotted key fits on one line, so counting dots per line, before
parsing, bounds it; a policy file needs a few per line at most."""
MAX_VALUE_TEXT = 64
"""Longest window, duration or unit string, such as ``"15 minutes"``."""
KINDS: Final[Mapping[str, type[Spec[Any]]]] = MappingProxyType(
    {"rate_limit": RateLimit, "spend_cap": SpendCap, "concurrency": Concurrency}
)
"""The ``kind`` a limit table may give, and the spec each builds; the default is ``rate_limit``."""

_MAX_PROBLEMS = 5
"""Problems named in one message; the rest are counted."""
_MAX_SOURCE = 200
"""Characters of a file's path that a message shows, from its end."""
_DEFAULTS = ("on_backend_error",)
_RATE_PARTS = ("limit", "window", "tz")
_DURATIONS = ("lease", "wait_timeout")
_BARE_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_log = logging.getLogger("atomlimit")

Field = tuple[object, str]
"""A field's value, ready for its spec, and the table it came from."""


# --------------------------------------------------------------------------
# The snapshot
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class PolicySet(Mapping[str, Spec[Any]]):
    """One policy file, read once: the specs by name, and each tier's.

    Immutable: a reload builds a new PolicySet, never changes one, so
    everything read from one set comes from one version of the file.

    >>> text = '[limits.api]\\nrate = "500/minute"\\n[tiers.pro.api]\\nrate = "5000/minute"'
    >>> policies = parse(text)
    >>> policies["api"].limit, policies.tier("pro")["api"].limit
    (500, 5000)
    """

    source: str
    """The file, as messages name it."""
    version: int
    """1 for the first load, one more for every reload that succeeded."""
    limits: Mapping[str, Spec[Any]]
    """The limits of ``[limits]``: what a subject without a tier gets."""
    tiers: Mapping[str, Mapping[str, Spec[Any]]] = field(default_factory=dict)
    """Each tier's limits: every name of ``limits``, with the tier's values
    where it gives them."""

    def __post_init__(self) -> None:
        # Read-only views, so nobody holding the set can change it for others.
        object.__setattr__(self, "limits", MappingProxyType(dict(self.limits)))
        tiers = {name: MappingProxyType(dict(specs)) for name, specs in self.tiers.items()}
        object.__setattr__(self, "tiers", MappingProxyType(tiers))

    def tier(self, name: str) -> Mapping[str, Spec[Any]]:
        """Every limit as tier ``name`` sets it; KeyError for a tier the file does not declare."""
        found = self.tiers.get(name) if type(name) is str else None
        if found is None:
            raise KeyError(f"{self.source} declares no tier {show(name)}")
        return found

    @property
    def failure_policies(self) -> Mapping[str, FailurePolicy]:
        """Each limit's ``on_backend_error``: what it decides when the server cannot be asked."""
        return MappingProxyType({name: spec.on_backend_error for name, spec in self.limits.items()})

    def __getitem__(self, name: str) -> Spec[Any]:
        return self.limits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.limits)

    def __len__(self) -> int:
        return len(self.limits)

    def __repr__(self) -> str:
        return (
            f"<PolicySet {self.source} version {self.version}: "
            f"{len(self.limits)} limits, {len(self.tiers)} tiers>"
        )


# --------------------------------------------------------------------------
# The live handle
# --------------------------------------------------------------------------

Watcher = Callable[[PolicySet], object]


class Policies(Mapping[str, Spec[Any]]):
    """A policy file, live: each read sees the set the last good reload made.

    ``policies["api"]`` reads the current set on every access. Code that
    reads several limits for one decision takes one snapshot first, with
    [`current`][atomlimit.policies.Policies.current], and reads them all
    from it: two separate reads may straddle a reload.

    Build one with [`load`][atomlimit.policies.load].
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = _check_path(path)
        self._current = parse(_read(self._path), source=_shown(self._path))
        # Serialises reloads, so versions count up and watchers run in
        # order; readers never take it.
        self._reloading = threading.RLock()
        self._watchers: list[Watcher] = []

    @property
    def path(self) -> str:
        """The file this reads."""
        return self._path

    def current(self) -> PolicySet:
        """The set in force now: immutable, so every read from it agrees."""
        # One attribute read: a reload replaces the reference and never
        # changes the object it pointed to.
        return self._current

    @property
    def version(self) -> int:
        """The current set's version: a change means a reload succeeded."""
        return self._current.version

    @property
    def tiers(self) -> Mapping[str, Mapping[str, Spec[Any]]]:
        """The current set's tiers (see [`PolicySet.tiers`][atomlimit.policies.PolicySet.tiers])."""
        return self._current.tiers

    def tier(self, name: str) -> Mapping[str, Spec[Any]]:
        """Every limit as tier ``name`` sets it, in the current set."""
        return self._current.tier(name)

    @property
    def failure_policies(self) -> Mapping[str, FailurePolicy]:
        """Each limit's ``on_backend_error``, in the current set."""
        return self._current.failure_policies

    def reload(self) -> PolicySet:
        """Read the file again and put the new set in force for the whole process.

        The file is read and every limit built before anything changes; the
        swap is one reference assignment, so no reader, thread or task, ever
        sees part of one file and part of another. A file that fails raises
        [`InvalidInput`][atomlimit.errors.InvalidInput] and the old set stays.
        After a swap, each callback given to
        [`watch`][atomlimit.policies.Policies.watch] is called with the new
        set, in order; one that raises is logged and the rest still run.

        It reads a file: from async code, call it in a thread
        (``await asyncio.to_thread(policies.reload)``).
        """
        with self._reloading:
            built = parse(_read(self._path), source=_shown(self._path))
            fresh = PolicySet(built.source, self._current.version + 1, built.limits, built.tiers)
            self._current = fresh
            for watcher in tuple(self._watchers):
                try:
                    watcher(fresh)
                except Exception:
                    _log.exception("a policy watcher failed after %s was reloaded", fresh.source)
            return fresh

    def select(self, *names: str) -> LiveLimits:
        """The limits ``names``, read from the set in force at each use.

        Give it to a middleware as its ``limits``: each request charges the
        limits as the last good reload left them. See docs/policies.md.
        """
        return LiveLimits(self, names)

    def limit(self, name: str) -> LiveLimit:
        """The limit ``name``, read from the set in force at each use.

        Give it to a ``@limiter.limited`` decorator as its limit: each call
        charges the limit as the last good reload left it.
        """
        return LiveLimit(self, name)

    def watch(self, callback: Watcher) -> Callable[[], None]:
        """Call ``callback(new_set)`` after every successful reload.

        Returns a function that stops the calls.
        """
        if not callable(callback):
            raise InvalidInput(f"watch takes a callable, got {show(callback)}")
        with self._reloading:
            if len(self._watchers) >= MAX_WATCHERS:
                raise InvalidInput(f"a Policies calls at most {MAX_WATCHERS} watchers")
            self._watchers.append(callback)

        def stop() -> None:
            with self._reloading:
                if callback in self._watchers:
                    self._watchers.remove(callback)

        return stop

    # Every Mapping method reads one snapshot, so ``items()`` never mixes sets.
    def __getitem__(self, name: str) -> Spec[Any]:
        return self._current[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current)

    def __len__(self) -> int:
        return len(self._current)

    def __contains__(self, name: object) -> bool:
        return name in self._current

    def keys(self) -> KeysView[str]:
        return self._current.keys()

    def items(self) -> ItemsView[str, Spec[Any]]:
        return self._current.items()

    def values(self) -> ValuesView[Spec[Any]]:
        return self._current.values()

    def __repr__(self) -> str:
        return f"<Policies of {self._current!r}>"


class LiveLimits:
    """Some limits of a [`Policies`][atomlimit.policies.Policies], by name, as
    the set in force has them: calling it reads them all from one snapshot.

    The same set gives the same tuple, so a reader can tell a reload by
    identity. A reload that drops one of the names makes the next call raise
    [`InvalidInput`][atomlimit.errors.InvalidInput] naming it.
    """

    __slots__ = ("_last", "_policies", "names")

    def __init__(self, policies: Policies, names: tuple[str, ...]) -> None:
        if not 0 < len(names) <= MAX_SELECTED:
            raise InvalidInput(f"select takes 1 to {MAX_SELECTED} limit names, got {len(names)}")
        self._policies = policies
        self.names = names
        """The limits' names, in the order they are charged."""
        self._last: tuple[PolicySet, tuple[Spec[Any], ...]] | None = None
        self()  # an unknown name is refused now, not on the first request

    def __call__(self) -> tuple[Spec[Any], ...]:
        current = self._policies.current()
        last = self._last
        if last is not None and last[0] is current:
            return last[1]
        missing = [name for name in self.names if name not in current]
        if missing:
            raise InvalidInput(f"{current.source}: no limit named {show(missing[0])}")
        chosen = tuple(current[name] for name in self.names)
        self._last = (current, chosen)
        return chosen

    def __repr__(self) -> str:
        return f"<LiveLimits {', '.join(self.names)}>"


class LiveLimit:
    """One limit of a [`Policies`][atomlimit.policies.Policies], by name, as the
    set in force has it: calling it returns the spec."""

    __slots__ = ("_live",)

    def __init__(self, policies: Policies, name: str) -> None:
        self._live = LiveLimits(policies, (name,))

    @property
    def name(self) -> str:
        """The limit's name."""
        return self._live.names[0]

    def __call__(self) -> Spec[Any]:
        return self._live()[0]

    def __repr__(self) -> str:
        return f"<LiveLimit {self.name}>"


MAX_SELECTED = 64
"""Most limits one selection names: as many as a middleware charges."""


def load(path: str | os.PathLike[str]) -> Policies:
    """Read the policy file at ``path``; InvalidInput naming the file, table and field if it is bad.

    >>> import pathlib, tempfile
    >>> file = pathlib.Path(tempfile.mkdtemp()) / "policies.toml"
    >>> _ = file.write_text('[limits.login]\\nlimit = 5\\nwindow = "15 minutes"\\n')
    >>> load(file)["login"].window
    datetime.timedelta(seconds=900)
    """
    return Policies(path)


# --------------------------------------------------------------------------
# Reading and parsing
# --------------------------------------------------------------------------


def parse(text: str, *, source: str = "<policies>") -> PolicySet:
    """The limits that TOML ``text`` declares; ``source`` names it in messages.

    For a file, use [`load`][atomlimit.policies.load], which can reload it.
    """
    if type(text) is not str:
        raise InvalidInput(f"{source}: policies are TOML text, got {show(text)}")
    document = _toml(text, source)
    problems = _Problems(source)
    defaults = _defaults(document, problems)
    limits, fields = _limits(document, defaults, problems)
    tiers = _tiers(document, defaults, limits, fields, problems)
    problems.raise_any()
    return PolicySet(source, 1, limits, tiers)


def _check_path(path: object) -> str:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if type(path) is not str or not path:
        raise InvalidInput(f"a policy file's path must be a str or a path, got {show(path)}")
    return path


def _shown(path: str) -> str:
    return path if len(path) <= _MAX_SOURCE else "..." + path[-_MAX_SOURCE:]


def _read(path: str) -> str:
    shown = _shown(path)
    try:
        # A FIFO or a device would block or never end: only a regular file is read.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InvalidInput(f"{shown}: not a regular file")
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise InvalidInput(
            f"{shown}: cannot read it: {err.strerror or type(err).__name__}"
        ) from err
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInput(f"{shown}: a policy file is at most {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InvalidInput(f"{shown}: line {line}: not UTF-8 text") from err


def _toml(text: str, source: str) -> dict[str, Any]:
    if len(text) > MAX_FILE_BYTES:
        raise InvalidInput(f"{source}: a policy file is at most {MAX_FILE_BYTES} bytes")
    if text.count(".") > MAX_DOTS_PER_LINE:
        for number, line in enumerate(text.split("\n"), start=1):
            if line.count(".") > MAX_DOTS_PER_LINE:
                raise InvalidInput(
                    f"{source}: line {number} has more than {MAX_DOTS_PER_LINE} dots; "
                    "a key of that many parts is not a policy"
                )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        # Its message ends "(at line L, column C)" and quotes nothing of the text.
        raise InvalidInput(f"{source}: not valid TOML: {str(err)[:_MAX_SOURCE]}") from err
    except RecursionError as err:
        raise InvalidInput(f"{source}: arrays or inline tables nested too deeply") from err


class _Problems:
    """What is wrong with one file, each line naming a table and a field."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[str] = []
        self.count = 0

    def add(self, table: str, field: str | None, message: str) -> None:
        self.count += 1
        if len(self.found) < _MAX_PROBLEMS:
            parts = [part for part in (table, None if field is None else _key(field)) if part]
            where = " ".join(parts) + (": " if field is not None else " ")
            self.found.append(where + message)

    def raise_any(self) -> None:
        if not self.count:
            return
        more = self.count - len(self.found)
        tail = f"; and {more} more" if more else ""
        raise InvalidInput(f"{self.source}: " + "; ".join(self.found) + tail)


def _key(name: str) -> str:
    """``name`` as a TOML key: bare when it can be, else quoted and cut short."""
    return name if _BARE_KEY.fullmatch(name) else show(name)


def _table(*keys: str) -> str:
    return "[" + ".".join(_key(key) for key in keys) + "]"


def _defaults(document: dict[str, Any], problems: _Problems) -> dict[str, Field]:
    unknown = [key for key in document if key not in ("defaults", "limits", "tiers")]
    if unknown:
        problems.add(
            "",
            unknown[0],
            "is not part of a policy file, which holds [defaults], [limits.NAME] "
            "and [tiers.TIER.NAME] tables",
        )
        problems.raise_any()
    raw = document.get("defaults", {})
    if not isinstance(raw, dict):
        problems.add("", "defaults", f"must be a table, got {show(raw)}")
        return {}
    found: dict[str, Field] = {}
    for key, value in raw.items():
        if key in _DEFAULTS:
            found[key] = (value, "[defaults]")
        else:
            problems.add("[defaults]", key, "is not a default: [defaults] takes on_backend_error")
    return found


def _limits(
    document: dict[str, Any], defaults: dict[str, Field], problems: _Problems
) -> tuple[dict[str, Spec[Any]], dict[str, dict[str, Field]]]:
    raw = document.get("limits")
    if not isinstance(raw, dict) or not raw:
        problems.add("", "limits", "declare at least one limit, as [limits.NAME]")
        problems.raise_any()
        return {}, {}
    if len(raw) > MAX_LIMITS:
        problems.add("[limits]", None, f"declares {len(raw)} limits; at most {MAX_LIMITS}")
        problems.raise_any()
    specs: dict[str, Spec[Any]] = {}
    fields: dict[str, dict[str, Field]] = {}
    for name, table in raw.items():
        label = _table("limits", name)
        if not _named(name, label, problems) or not _is_table(table, "limits", name, problems):
            continue
        own = _fields(table, label, problems)
        if own is None:
            continue
        fields[name] = own
        spec = _build(name, {**defaults, **own}, label, problems)
        if spec is not None:
            specs[name] = spec
    return specs, fields


def _tiers(
    document: dict[str, Any],
    defaults: dict[str, Field],
    limits: dict[str, Spec[Any]],
    fields: dict[str, dict[str, Field]],
    problems: _Problems,
) -> dict[str, dict[str, Spec[Any]]]:
    raw = document.get("tiers", {})
    if not isinstance(raw, dict):
        problems.add("", "tiers", f"must be a table of tiers, got {show(raw)}")
        return {}
    if len(raw) > MAX_TIERS:
        problems.add("[tiers]", None, f"declares {len(raw)} tiers; at most {MAX_TIERS}")
        problems.raise_any()
    declared = document.get("limits", {})
    tiers: dict[str, dict[str, Spec[Any]]] = {}
    for tier, entries in raw.items():
        if not _named(tier, _table("tiers", tier), problems):
            continue
        if not isinstance(entries, dict):
            problems.add(_table("tiers"), tier, f"must be a table of limits, got {show(entries)}")
            continue
        tiers[tier] = dict(limits)
        for name, table in entries.items():
            label = _table("tiers", tier, name)
            if not _is_table(table, "tiers", tier, problems, name):
                continue
            if name not in declared:
                problems.add(
                    label,
                    None,
                    "names no limit of [limits]: a tier sets its own values for limits "
                    "declared there",
                )
                continue
            if name not in fields:
                continue  # [limits] is wrong about it, and says so already
            own = _fields(table, label, problems)
            if own is None or not _same_kind(fields[name], own, label, problems):
                continue
            spec = _build(name, {**defaults, **fields[name], **own}, label, problems)
            if spec is not None:
                tiers[tier][name] = spec
    return tiers


def _same_kind(
    base: dict[str, Field], own: dict[str, Field], label: str, problems: _Problems
) -> bool:
    """Whether a tier's table keeps its limit's kind: one name, one kind of state."""
    kind = base.get("kind", ("rate_limit", ""))[0]
    if "kind" not in own or own["kind"][0] == kind:
        return True
    problems.add(
        label, "kind", f"a tier keeps its limit's kind, {kind}, got {show(own['kind'][0])}"
    )
    return False


def _named(name: str, label: str, problems: _Problems) -> bool:
    if 0 < len(name) <= MAX_NAME:
        return True
    problems.add(label, None, f"a name has 1 to {MAX_NAME} characters, got {len(name)}")
    return False


def _is_table(
    value: object, section: str, name: str, problems: _Problems, entry: str | None = None
) -> bool:
    if isinstance(value, dict):
        return True
    keys = (section, name) if entry is None else (section, name, entry)
    problems.add(
        _table(*keys[:-1]),
        keys[-1],
        f"must be a table such as {_table(*keys)}, got {show(value)}",
    )
    return False


def _fields(table: dict[str, Any], label: str, problems: _Problems) -> dict[str, Field] | None:
    """A limit table's fields, each converted from TOML to what its spec takes."""
    found: dict[str, Field] = {}
    before = problems.count
    if "rate" in table:
        clash = [part for part in _RATE_PARTS if part in table]
        if clash:
            problems.add(label, "rate", f"gives limit, window and tz; drop {clash[0]} or rate")
    for key, value in table.items():
        try:
            converted = _convert(key, value)
        except InvalidInput as err:
            problems.add(label, key, str(err))
            continue
        if key == "rate":
            found.update((part, (converted[part], label)) for part in _RATE_PARTS)
            found["rate"] = (True, label)
        else:
            found[key] = (converted, label)
    return found if problems.count == before else None


def _convert(key: str, value: object) -> Any:
    """``value`` of field ``key`` as its spec takes it: TOML has no durations or decimals."""
    if key == "name":
        raise InvalidInput("the table's key names the limit; a table takes no name")
    if key == "kind":
        if type(value) is str and value in KINDS:
            return value
        raise InvalidInput(f"must be one of {', '.join(KINDS)}, got {show(value)}")
    if key == "rate":
        rate = parse_rate(value)
        return {"limit": rate.limit, "window": rate.window, "tz": rate.tz}
    if key == "limit" and type(value) is float:
        raise InvalidInput(
            f'must be an integer, or an amount in a string such as "100.00" '
            f"(a float is not exact), got {show(value)}"
        )
    if key == "window":
        return _window(value)
    if key in _DURATIONS:
        return _duration(value)
    if key == "unit":
        return _decimal(value)
    return value


def _window(value: object) -> Any:
    if type(value) is not str or len(value) > MAX_VALUE_TEXT or "@" in value:
        raise InvalidInput(
            'must be a calendar unit such as "day" or a length such as "30s" or '
            f'"15 minutes" (the zone goes in tz), got {show(value)}'
        )
    try:
        return parse_rate("1/" + value).window
    except InvalidInput as err:
        raise InvalidInput(
            "must be second, minute, hour, day, week or month, or a length such as "
            f'"30s" or "15 minutes", got {show(value)}'
        ) from err


def _duration(value: object) -> timedelta:
    window = _window(value)
    if isinstance(window, timedelta):
        return window
    length = UNIT_LENGTHS.get(window)
    if length is None:
        raise InvalidInput(f"a month has no fixed length, got {show(value)}")
    return length


def _decimal(value: object) -> Decimal:
    if type(value) is str and len(value) <= MAX_VALUE_TEXT:
        try:
            return Decimal(value)
        except InvalidOperation:
            pass
    raise InvalidInput(f'must be a decimal in a string, such as "0.01", got {show(value)}')


def _build(
    name: str, fields: dict[str, Field], label: str, problems: _Problems
) -> Spec[Any] | None:
    """The spec ``fields`` describe, or None with its problems added."""
    kind = str(fields.get("kind", ("rate_limit", label))[0])
    model = KINDS[kind]
    if "rate" in fields and model is not RateLimit:
        problems.add(
            label, "rate", f"only a rate_limit takes a rate; a {kind} takes limit and window"
        )
        return None
    data = {key: value for key, (value, _) in fields.items() if key not in ("kind", "rate")}
    try:
        return model(name=name, **data)
    except InvalidInput as err:
        cause = err.__cause__
        if not isinstance(cause, ValidationError):
            problems.add(label, None, str(err))
            return None
        for problem in cause.errors(include_url=False):
            _add_problem(problem, kind, fields, label, problems)
        return None


def _add_problem(
    problem: ErrorDetails, kind: str, fields: dict[str, Field], label: str, problems: _Problems
) -> None:
    loc = problem["loc"]
    field = str(loc[0]) if loc else None
    message = _says(problem, kind)
    origin = fields.get(field, (None, label))[1] if field is not None else label
    if origin != label:
        message += f" (from {origin})"
    problems.add(label, field, message)


def _says(problem: ErrorDetails, kind: str) -> str:
    """A pydantic problem as a policy file's reader would put it."""
    kind_of = problem["type"]
    context = problem.get("ctx") or {}
    given = problem.get("input")
    if kind_of == "missing":
        return "is required"
    if kind_of == "extra_forbidden":
        return f"is not a field of a {kind}"
    if kind_of == "greater_than" and type(context.get("gt")) is int:
        said = f"must be at least {context['gt'] + 1}"
    elif kind_of in ("greater_than_equal", "less_than_equal"):
        bound = context.get("ge", context.get("le"))
        said = f"must be at {'least' if 'ge' in context else 'most'} {bound}"
    elif kind_of in ("int_type", "int_from_float"):
        said = "must be an integer"
    elif kind_of == "bool_type":
        said = "must be true or false"
    elif kind_of == "literal_error":
        said = f"must be {context.get('expected')}"
    else:
        said = str(problem["msg"]).removeprefix("Value error, ")
        if not problem["loc"] or "got" in said:
            # A whole-spec check names its field and value itself.
            return said
    return f"{said}, got {show(given)}"
