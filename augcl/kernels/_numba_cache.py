"""Numba's on-disk cache of augcl's CPU kernels, keyed on the sources of all of them.

Numba keys a cached function on its own file's content only. A kernel compiles in the functions it calls from
other files (``frames_cpu._noisy_segment`` inlines ``noise_cpu.noise_row``; ``fft_cpu.noisy_mel`` calls
``_noisy_segment``), so when only such another file changed, the caller's cache still matched its unchanged file
and it ran the old code: after a ``git pull`` in an editable install, or an upgrade (pip removes the files it
installed, not the ``.nbi``/``.nbc`` files Numba wrote beside them in ``__pycache__``). Here every function
defined in this package is stamped with one hash of all the package's ``.py`` files: a change to any of them
recompiles every kernel once, then the cache serves them again.

Importing this module puts its locators first in Numba's list (each kernel module imports it before its first
``@njit(cache=True)``, where Numba picks a function's locator); a function outside this package gets Numba's own.
``NUMBA_CACHE_DIR`` keeps its meaning (:class:`UserDirLocator`), and ``NUMBA_CACHE_LOCATOR_CLASSES``, where set,
replaces the list, as it does for Numba's own locators.
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings

import numba
from numba.core import caching

_DIR = os.path.dirname(os.path.abspath(__file__))


def sources_stamp(folder: str = _DIR) -> str:
    """sha256 of the names and contents of the ``.py`` files in ``folder``, in name order."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(".py"))
    return _stamp(folder, tuple((n, os.stat(os.path.join(folder, n)).st_mtime_ns,
                                 os.stat(os.path.join(folder, n)).st_size) for n in names))


@functools.lru_cache(maxsize=None)
def _stamp(folder: str, files: tuple) -> str:
    # memoised on the files' names, times and sizes: a file changed while the process runs is hashed again
    h = hashlib.sha256()
    for name, _, _ in files:
        with open(os.path.join(folder, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


class _KernelSources:
    """Mixin for a Numba source-file locator: only functions of this package, stamped with :func:`sources_stamp`."""

    def get_source_stamp(self):
        return sources_stamp()

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != _DIR:
            return None
        return super().from_function(py_func, py_file)


class UserDirLocator(_KernelSources, caching.UserProvidedCacheLocator):
    """Under ``NUMBA_CACHE_DIR``, where it is set."""


class InTreeLocator(_KernelSources, caching.InTreeCacheLocator):
    """In the package's ``__pycache__``, where it is writable."""


class UserWideLocator(_KernelSources, caching.UserWideCacheLocator):
    """In the user's cache folder otherwise."""


LOCATORS = (UserDirLocator, InTreeLocator, UserWideLocator)


def install() -> None:
    """Put :data:`LOCATORS` first in Numba's list of cache locators, in Numba's own order (idempotent). The list is
    ``CacheImpl._locator_classes`` (``_CacheImpl`` in older Numbas); where a Numba has neither, a warning says that
    the kernels' caches are keyed on their own files only."""
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    if not isinstance(classes, list):
        warnings.warn(f"numba {numba.__version__} has no CacheImpl._locator_classes: augcl's kernel caches are keyed "
                      "on each kernel's own file, so after a change to another kernel file clear them (delete "
                      "augcl/kernels/__pycache__/*.nbi)", RuntimeWarning, stacklevel=2)
        return
    for cls in reversed(LOCATORS):
        if cls not in classes:
            classes.insert(0, cls)


install()
