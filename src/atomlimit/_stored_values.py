"""Stored values: pydantic models as JSON, or raw bytes and str.

Shared by the cache and the session store. A stored value that no longer
validates reads as a miss, never as an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from atomlimit._errors import InvalidInput


def encode(model: type[BaseModel] | None, value: object, what: str) -> str | bytes:
    """The stored form of ``value``: a model's JSON, or raw bytes or str."""
    if model is None:
        if isinstance(value, bytes | str):
            return value
        raise InvalidInput(f"{what} takes bytes or str (no model), got {type(value).__name__}")
    if isinstance(value, model):
        return value.model_dump_json()
    raise InvalidInput(f"{what} takes a {model.__name__}, got {type(value).__name__}")


def reader(model: type[BaseModel] | None, complain: Callable[[str], None]) -> Callable[[Any], Any]:
    """Reply -> value. A stored value the model rejects is a miss (None).

    ``complain`` gets why, naming fields and error types but none of the
    value's content. A miss, never an error: the caller recomputes, and a
    deploy that changed the model must not break the hot path on old values.
    """
    if model is None:
        return _raw

    def read(reply: str | bytes | None) -> BaseModel | None:
        if reply is None:
            return None
        try:
            return model.model_validate_json(reply)
        except ValueError as err:
            complain(f"does not validate as {model.__name__} ({_problems(err)})")
            return None

    return read


def _raw(reply: Any) -> Any:
    return reply


def _problems(err: ValueError) -> str:
    if not isinstance(err, ValidationError):
        return type(err).__name__
    found = [
        f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['type']}"
        for e in err.errors(include_url=False, include_input=False, include_context=False)
    ]
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return "; ".join(found[:3]) + more


def ok(reply: object) -> bool:
    """SET (NX/XX), PEXPIRE and the unlock script: did it happen?"""
    return bool(reply)
