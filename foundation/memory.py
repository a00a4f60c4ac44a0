"""Giving freed heap back to the operating system after a burst of connections.

glibc keeps the pages of freed small allocations in its arenas; after a burst of
thousands of connections the process's RSS stays at its peak for ever (issue 10
measured 650 MB after the connections were gone). `malloc_trim(0)` returns the
free pages. Elsewhere (musl, macOS) there is nothing to call and this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("kubearc.memory")

_libc = None
try:
    _name = ctypes.util.find_library("c")
    if _name:
        _libc = ctypes.CDLL(_name)
        _libc.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc
    _libc = None


def give_back() -> None:
    """Return free heap pages to the OS (glibc's `malloc_trim`); a no-op where there is none."""
    if _libc is not None:
        _libc.malloc_trim(0)
