"""Cache lifetimes by name: the Next.js ``cacheLife`` profiles, accepted wherever
``revalidate`` is (:func:`wsgi_isr.cached`, Flask's ``@isr.page``)::

    @cached("hours")                 # fresh for an hour, served stale for up to a day
    @isr.page("minutes", expire=600)  # an explicit expire wins over the profile's
"""

from __future__ import annotations

import math

Revalidate = float | int | bool | str

#: Next.js ``cacheLife`` profiles: name -> (revalidate, expire) in seconds.
PROFILES: dict[str, tuple[float, float]] = {
    "seconds": (1.0, 60.0),
    "minutes": (60.0, 3600.0),
    "hours": (3600.0, 86400.0),
    "days": (86400.0, 7 * 86400.0),
    "weeks": (7 * 86400.0, 30 * 86400.0),
    "max": (30 * 86400.0, 365 * 86400.0),
}


def lifetime(
    revalidate: Revalidate, expire: float | None = None
) -> tuple[float | None, float | None]:
    """``(revalidate, expire)`` in seconds (``None``: no limit) from what a user wrote:
    seconds, ``False`` (until invalidated) or a profile name; an explicit ``expire`` wins
    over the profile's. ``ValueError`` for anything else."""
    if isinstance(revalidate, str):
        if revalidate not in PROFILES:
            names = ", ".join(repr(n) for n in PROFILES)
            raise ValueError(f"unknown cache profile {revalidate!r}; one of {names}")
        seconds, default_expire = PROFILES[revalidate]
        return seconds, float(expire) if expire is not None else default_expire
    if revalidate is False:
        r: float | None = None
    elif (
        isinstance(revalidate, bool)
        or not isinstance(revalidate, int | float)
        or not math.isfinite(revalidate)
        or revalidate <= 0
    ):
        raise ValueError(
            f"revalidate must be seconds > 0, False or a profile name, got {revalidate!r}"
        )
    else:
        r = float(revalidate)
    if expire is not None and (
        isinstance(expire, bool) or not isinstance(expire, int | float) or not expire > 0
    ):
        raise ValueError(f"expire must be positive seconds, got {expire!r}")
    return r, None if expire is None else float(expire)


__all__ = ["PROFILES", "Revalidate", "lifetime"]
