"""Exceptions raised by wsgi_isr. Everything derives from :class:`ISRError`."""

from __future__ import annotations


class ISRError(Exception):
    """Root of every error wsgi_isr raises on purpose."""


class StoreError(ISRError):
    """A store could not be read or written (unreachable server, full disk, ...).

    The middleware catches it, logs it and calls the application instead
    (fail open); it never becomes a 500.
    """


class DurabilityError(StoreError):
    """A durable store (``?durable=1``) could not confirm that an invalidation reached
    its replicas in time. The revalidation endpoint answers 503 with this message."""
