"""The middleware of a Django project: built from ``settings.ISR`` around Django's own
WSGI handler, one per process, and the invalidation helpers bound to it.

    # mysite/wsgi.py
    import os
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from wsgi_isr.django import get_wsgi_application
    application = get_wsgi_application()
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from ..invalidation import Mode, PathType, check_mode, checked_tags, path_tag
from ..middleware import ISRMiddleware
from .conf import middleware_options

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

_bound: ISRMiddleware | None = None
_lock = threading.RLock()


def install(app: WSGIApplication, **options: Any) -> ISRMiddleware:
    """Wrap ``app`` (a Django WSGI handler) in the middleware configured by
    ``settings.ISR``; keyword ``options`` win over the settings. The result becomes the
    middleware :func:`revalidate_tag` and the management commands act on."""
    global _bound
    kwargs = {**middleware_options(), **options}
    try:
        mw = ISRMiddleware(app, **kwargs)
    except ValueError as exc:
        raise ImproperlyConfigured(f"settings.ISR: {exc}") from exc
    with _lock:
        _bound = mw
    return mw


def get_wsgi_application(**options: Any) -> ISRMiddleware:
    """Django's ``get_wsgi_application()`` behind the ISR middleware (``settings.ISR``
    validated here, at start-up; keyword ``options`` such as ``runner=`` win)."""
    from django.core.wsgi import get_wsgi_application as django_application

    return install(django_application(), **options)


def middleware() -> ISRMiddleware:
    """The project's middleware in this process. Outside a server (``manage.py``, a
    shell, a worker saving models) one is built from the settings on first use, on the
    same store the servers use, so its invalidations reach them."""
    mw = _bound
    if mw is not None:
        return mw
    from django.core.handlers.wsgi import WSGIHandler

    with _lock:
        return _bound if _bound is not None else install(WSGIHandler())


def revalidate_tag(*tags: str, mode: Mode = "soft", using: str | None = None) -> float | None:
    """Invalidate tags (see :meth:`ISRMiddleware.revalidate_tag`): from a view, a
    signal handler (``post_save``), a management command or a shell.

    Inside a transaction of any database (the admin's saves, ``ATOMIC_REQUESTS``,
    ``transaction.atomic(using=...)``) it acts when the transaction commits
    and returns ``None`` (see :func:`when_committed`); ``using``: only that database's
    transaction counts (a ``post_save`` receiver's ``using`` argument)."""
    checked_tags(tags)  # a bad tag is the caller's error now, not at the commit
    check_mode(mode)
    return when_committed(lambda: middleware().revalidate_tag(*tags, mode=mode), using)


def revalidate_path(
    path: str, type: PathType = "page", *, mode: Mode = "soft", using: str | None = None
) -> float | None:
    """Invalidate a path (see :meth:`ISRMiddleware.revalidate_path`); inside a
    transaction, when it commits, as :func:`revalidate_tag`."""
    path_tag(path, type)
    check_mode(mode)
    return when_committed(lambda: middleware().revalidate_path(path, type, mode=mode), using)


def when_committed(invalidate: Callable[[], float], using: str | None = None) -> float | None:
    """``invalidate()`` now, or, inside a transaction, once it commits (nothing on a
    rollback). Invalidating before the commit would let a render that starts in
    between read the old rows and be stored as fresh; after it, a render that read
    them counts as started before the invalidation (stale). The commit has happened by
    then, so a failing store is logged (Django's ``robust`` on_commit), not raised
    into the request that saved."""
    from django.db import connections, transaction

    if using is not None:
        open_ = [using] if connections[using].in_atomic_block else []
    else:
        open_ = [c.alias for c in connections.all(initialized_only=True) if c.in_atomic_block]
    if not open_:
        return invalidate()
    # Without ``using``, which database holds the rows the pages read is the router's
    # secret: act after each open transaction's COMMIT, so the last one (all rows
    # visible) invalidates once more; a rollback of one with a commit of another still
    # invalidates (one regeneration more, never a stale page kept).
    for alias in open_:
        transaction.on_commit(invalidate, using=alias, robust=True)
    return None
