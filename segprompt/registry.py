"""A small name -> factory registry, the pattern behind every ``create_*`` function.

``create_segmenter("sam")``, ``load_dataset("kvasir")``, ``create_strategy("kmedoids")`` all
look a name up in a :class:`Registry`. Unknown names raise :class:`ConfigError` listing the
known ones (with the closest match), so a typo never turns into a silent default.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from segprompt.errors import ConfigError

T = TypeVar("T")


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """Maps names (case-insensitive, ``_`` and ``-`` equivalent) to registered objects."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name", "alias")`` on a class or function."""

        def decorator(obj: T) -> T:
            self.add(name, obj, *aliases)
            return obj

        return decorator

    def add(self, name: str, obj: T, *aliases: str) -> None:
        key = _normalise(name)
        if key in self._items or key in self._aliases:
            raise ConfigError(f"{self.kind} {name!r} is registered twice")
        self._items[key] = obj
        for alias in aliases:
            self._aliases[_normalise(alias)] = key

    def resolve(self, name: str) -> str:
        """Canonical name of ``name`` (an alias resolves to its target)."""
        key = _normalise(name)
        key = self._aliases.get(key, key)
        if key not in self._items:
            known = sorted(self._items)
            close = difflib.get_close_matches(key, known + sorted(self._aliases), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(known)}")
        return key

    def get(self, name: str) -> T:
        return self._items[self.resolve(name)]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _normalise(name)
        return key in self._items or key in self._aliases

    def names(self) -> list[str]:
        return sorted(self._items)

    def expand(self, names: "list[str] | tuple[str, ...]") -> list[str]:
        """``names`` with ``"all"`` replaced by every registered name (in sorted order), each name
        once, the given order kept; unknown names raise :class:`ConfigError` as in :meth:`resolve`."""
        out: list[str] = []
        for name in names:
            for item in (self.names() if _normalise(name) == "all" else [name]):
                self.resolve(item)
                if item not in out and self.resolve(item) not in {self.resolve(o) for o in out}:
                    out.append(item)
        return out

    def items(self) -> Iterator[tuple[str, T]]:
        for key in sorted(self._items):
            yield key, self._items[key]
