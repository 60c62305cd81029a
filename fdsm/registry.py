"""One registry per concept: derivative methods, objectives, models and kernels register here by name.

A duplicate name raises, a miss lists the valid names, and an entry can be registered as disabled with the reason
(for example a method that needs Triton on a machine without it), so that asking for it explains itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class NotSupported(NotImplementedError):
    """A registered method that cannot run this f, though it runs on this machine: Taylor mode with no rule for one
    of f's ops, or an f it cannot trace; an FD objective whose 1/eps^2 overflows its dtype (float16 at a small
    eps). The message says why and what to do. A benchmark records it as an
    ``unsupported`` row with that message, as it does a disabled entry, and not as an ``error``: the method is
    not wrong, it does not apply."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    value: T
    enabled: bool = True
    reason: str = ""


class Registry(Generic[T]):
    """A name -> value table for one concept (``kind`` is used in error messages, e.g. "method")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, value: T, *, enabled: bool = True, reason: str = "", replace: bool = False) -> T:
        """Add ``name``; one registered already is a ValueError, unless ``replace``."""
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, value, enabled, reason)
        return value

    def decorator(self, name: str, **kwargs) -> Callable[[T], T]:
        """``@REGISTRY.decorator("name")`` registers the decorated object and returns it unchanged."""
        return lambda value: self.register(name, value, **kwargs)

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name``, enabled or not; an unknown name is a ValueError that lists the valid ones."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {sorted(self._entries)}")
        return self._entries[name]

    def get(self, name: str) -> T:
        """The value for ``name``; a disabled entry raises a RuntimeError that says why it cannot run here."""
        entry = self.entry(name)
        if not entry.enabled:
            raise RuntimeError(f"{self.kind} {name!r} is not available here: {entry.reason}")
        return entry.value

    def names(self, *, enabled_only: bool = False) -> list[str]:
        return [n for n, e in self._entries.items() if e.enabled or not enabled_only]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        """The kind and the names, a disabled one marked (its reason: ``entry(name).reason``).

        >>> r = Registry("colour"); _ = r.register("red", 1); _ = r.register("uv", 2, enabled=False, reason="no lamp")
        >>> r
        Registry('colour': red, uv (disabled))
        """
        names = ", ".join(e.name + ("" if e.enabled else " (disabled)") for e in self._entries.values())
        return f"Registry({self.kind!r}: {names})"

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())
