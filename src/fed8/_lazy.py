"""Lazy package exports: a name is imported from its module on first use (importing a package stays cheap)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from ``modules[name]`` (absolute, or relative
    to ``package`` when it starts with a dot) on first access."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            import importlib

            return getattr(importlib.import_module(modules[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
