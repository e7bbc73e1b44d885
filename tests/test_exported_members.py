"""Each package's ``__all__`` is sorted, unique and names only what exists (after httpx's test_exported_members)."""

import importlib
import pkgutil

import pytest

import fed8

# Modules that need an optional extra to import are left out of the walk.
_OPTIONAL = ("fed8.flower",)


def _modules():
    names = ["fed8"]
    for info in pkgutil.walk_packages(fed8.__path__, prefix="fed8."):
        if not info.name.startswith(_OPTIONAL):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_all_is_sorted_and_names_what_exists(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        assert not hasattr(module, "__path__"), f"package {name} has no __all__"
        return
    assert isinstance(exported, list), f"{name}.__all__ must be a literal list"
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what does not exist: {missing}"


def test_package_all_lists_every_public_name_it_imports():
    for name in _modules():
        module = importlib.import_module(name)
        if not hasattr(module, "__path__") or name == "fed8":
            continue
        public = {n for n, v in vars(module).items() if not n.startswith("_") and not isinstance(v, type(fed8))
                  and getattr(v, "__module__", name).startswith(name)}
        assert public <= set(module.__all__), f"{name} exposes {sorted(public - set(module.__all__))} outside __all__"
