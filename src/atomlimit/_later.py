"""A sequence made when first read: for what most callers never look at.

A model call's hits (read only by a policy deciding without the server, or
an acquire over several subjects) and its acquire's decisions (read only
by a caller who asks) are kept as the means to make them, and made once,
on the first read of any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar, overload

T = TypeVar("T")


class Later(Sequence[T]):
    """The list ``make`` returns, made on the first read, then kept.

    ``length``, when known in advance, answers ``len`` without making it.
    """

    __slots__ = ("_length", "_made", "_make")

    def __init__(self, make: Callable[[], list[T]], length: int | None = None) -> None:
        self._make: Callable[[], list[T]] | None = make
        self._made: list[T] | None = None
        self._length = length

    def made(self) -> list[T]:
        """The list, made now if not yet."""
        made = self._made
        if made is None:
            assert self._make is not None
            made = self._made = self._make()
            self._make = None  # nor what it reads, needed again
        return made

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        return self.made()[index]

    def __len__(self) -> int:
        if self._made is None and self._length is not None:
            return self._length
        return len(self.made())

    def __iter__(self) -> Iterator[T]:
        return iter(self.made())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Later):
            other = other.made()
        return self.made() == other

    def __repr__(self) -> str:
        return repr(self.made())
