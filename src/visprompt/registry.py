"""Plain-dict registries filled by decorators (timm style).

Adding a dataset, method or named backbone is one new file that decorates a
factory with ``@REGISTRY.register("name")``; looking up an unknown name raises a
:class:`~visprompt.errors.VispromptError` that lists the known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from visprompt.errors import VispromptError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping with a decorator to fill it and a helpful lookup error."""

    def __init__(self, kind: str, discover: tuple[str, ...] = ()) -> None:
        """``discover``: modules imported (once) before the first lookup, which fill the registry.

        This is how a leaf module can hold a registry whose entries live in a package that
        imports the leaf: ``visprompt.config`` looks methods up in ``METHOD_REGISTRY``
        without importing any method module itself (no import cycle); the first lookup
        imports ``visprompt.methods``, whose modules register themselves.
        """
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._discover = discover

    def _discovered(self) -> dict[str, T]:
        while self._discover:
            module, self._discover = self._discover[0], self._discover[1:]
            importlib.import_module(module)
        return self._entries

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._discovered()[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise VispromptError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def unregister(self, name: str) -> T:
        """Remove the entry ``name`` and return it (unknown names raise as :meth:`get` does)."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    @contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """Entries registered inside the block are removed when it ends.

        For code that registers a throwaway entry (a test's toy method, a
        notebook experiment) without leaving it behind for later lookups;
        entries registered before the block are untouched.
        """
        before = set(self._discovered())
        try:
            yield self
        finally:
            for name in set(self._entries) - before:
                del self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._discovered())

    def __contains__(self, name: object) -> bool:
        return name in self._discovered()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._discovered())
