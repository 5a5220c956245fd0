"""One registry for everything that crosses module boundaries by name.

A new crossing module (or loss, or search space) is one file that registers itself plus
one import line in its package ``__init__``::

    @CROSSING_MODULES.register("mlp", params=MLPParams)
    class MLPCrossing(nn.Module): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

__all__ = ["CROSSING_MODULES", "Registry", "RegistryEntry"]

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    name: str
    obj: T
    params: type[BaseModel] | None


class Registry(Generic[T]):
    """Name -> object, with an optional pydantic model for the object's parameters."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry[T]] = {}

    def register(self, name: str, params: type[BaseModel] | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = RegistryEntry(name, obj, params)
            return obj

        return deco

    def get(self, name: str) -> RegistryEntry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; known: {sorted(self._entries)}"
            ) from None

    def parse_params(self, name: str, raw: dict[str, Any]) -> BaseModel | None:
        entry = self.get(name)
        return None if entry.params is None else entry.params.model_validate(raw)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


CROSSING_MODULES: Registry[Any] = Registry("crossing module")
