"""Locate data files shipped inside installed wheels without importing those packages."""

from __future__ import annotations

import importlib.util
import os
import site
import sys
from pathlib import Path


def package_dir(pkg: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it.

    ``importlib.util.find_spec`` on a top-level name does not execute the package; if that
    fails (broken install), fall back to scanning site-packages / sys.path.
    """
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        locs = list(spec.submodule_search_locations or [])
        if locs:
            return Path(locs[0])
        if spec.origin:
            return Path(spec.origin).parent
    roots: list[str] = []
    try:
        roots += site.getsitepackages()
    except AttributeError:
        pass
    roots += [site.getusersitepackages()] if hasattr(site, "getusersitepackages") else []
    roots += sys.path
    for root in roots:
        cand = Path(root or ".") / pkg
        if cand.is_dir():
            return cand
    return None


def package_file(pkg: str, relpath: str, install_hint: str) -> Path:
    d = package_dir(pkg)
    if d is None:
        raise FileNotFoundError(f"package {pkg!r} is not installed; {install_hint}")
    p = d / relpath
    if not p.exists():
        raise FileNotFoundError(f"{p} not found in installed package {pkg!r}; {install_hint}")
    return p


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(base) / "tvm_mpq"
    d.mkdir(parents=True, exist_ok=True)
    return d
