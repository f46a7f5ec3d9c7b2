"""psycopg 3 under gevent: it chooses its wait functions once, when it is imported.

A process that imported psycopg before gevent patched ``select`` (a Gunicorn
master with ``preload_app``, before it forks) keeps the blocking choice:
detect that, and have psycopg choose again once gevent has patched.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["TOO_EARLY", "psycopg_imported_before_patch", "repair_psycopg_after_patch"]

TOO_EARLY = (
    "psycopg 3 was imported before gevent patched this worker, so it blocks the event "
    "loop: the Gunicorn master imported it (preload_app = True, or a config file or "
    "hook that imports the app or psycopg); load the app in the workers, or import "
    "psycopg only inside functions the workers call"
)


def psycopg_imported_before_patch() -> bool:
    """Whether psycopg 3 chose its blocking wait functions before gevent patched ``select``.

    psycopg reads ``select``/``selectors`` once, at import: a process that
    imported it before ``gevent.monkey.patch_all()`` (a Gunicorn master with
    ``preload_app``, before it forks) keeps the blocking choice for good.
    """
    waiting = sys.modules.get("psycopg.waiting")
    monkey = sys.modules.get("gevent.monkey")
    if waiting is None or monkey is None or not monkey.is_module_patched("select"):
        return False
    import selectors

    wait_c = getattr(waiting, "wait_c", None)
    chose_c = wait_c is not None and getattr(waiting, "wait", None) is wait_c
    stale_selector = getattr(waiting, "DefaultSelector", None) is not selectors.DefaultSelector
    return chose_c or stale_selector


def repair_psycopg_after_patch() -> bool:
    """Let psycopg 3 choose its wait functions again, now that gevent has patched ``select``.

    For a worker whose master imported psycopg (``preload_app``): psycopg
    makes the choice when ``psycopg.waiting`` runs, so running it again
    (``importlib.reload``) makes the choice a freshly imported psycopg makes
    under gevent. Its callers look the functions up on the module at each
    call. Returns True when it repaired something; the worker's boot check
    measures the result either way.
    """
    if not psycopg_imported_before_patch():
        return False
    importlib.reload(sys.modules["psycopg.waiting"])
    return not psycopg_imported_before_patch()
