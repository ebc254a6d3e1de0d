"""Reading ``settings.ISR``: the middleware's keyword options, upper-cased.

    ISR = {
        "STORE": "file:///var/cache/mysite-isr",
        "SECRET": os.environ["ISR_SECRET"],
        "BYPASS_COOKIES": ["sessionid"],   # logged-in users see their own pages
    }

Every keyword of :class:`~wsgi_isr.ISRMiddleware` is accepted (so a new option of the
core is a new setting without a change here); an unknown key or a value of the wrong
kind is an ``ImproperlyConfigured`` when Django starts. Like whitenoise, this module only
reads settings: the core takes plain keyword arguments.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ..middleware import ISRMiddleware

#: options that are objects, not settings (pass them to get_wsgi_application)
_CODE_ONLY = frozenset({"app", "runner", "clock"})


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _size(value: Any) -> bool:
    return _count(value) or _text(value)  # a text ("64MiB") is parsed by the core


def _names(value: Any) -> bool:
    return isinstance(value, list | tuple | set | frozenset) and all(
        isinstance(v, str) and v for v in value
    )


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


#: settings key -> (check, what it must be). Keys without a check are passed through
#: and checked by the core (a ValueError there is an ImproperlyConfigured too).
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "SECRET": (_optional(_text), "a non-empty string or None"),
    "ENDPOINT": (_text, "a path such as '/_isr'"),
    "TRUSTED_HOSTS": (_optional(_names), "a list of host names or None"),
    "BYPASS_COOKIES": (_names, "a list of cookie names, e.g. ['sessionid']"),
    "BYPASS_TOKEN": (_optional(_text), "a non-empty string or None"),
    "QUERY_PARAMS": (_optional(_names), "a list of query parameter names or None"),
    "MAX_ENTRY_BYTES": (_positive, "a positive number of bytes"),
    "MAX_REQUEST_BYTES": (_positive, "a positive number of bytes"),
    "LOCK_TIMEOUT": (_positive, "a positive number of seconds"),
    "COALESCE_TIMEOUT": (_positive, "a positive number of seconds"),
    "REGENERATION_BACKOFF": (_positive, "a positive number of seconds"),
    "PASS_TTL": (_positive, "a positive number of seconds"),
    "MAX_PENDING": (_count, "a positive whole number"),
    "LOCAL_TTL": (_optional(_positive), "a positive number of seconds or None"),
    "LOCAL_MAX_ENTRIES": (_count, "a positive whole number"),
    "LOCAL_MAX_BYTES": (_size, "a positive number of bytes or a size such as '64MiB'"),
}


def option_names() -> dict[str, str]:
    """Settings key -> :class:`ISRMiddleware` keyword, read from its signature."""
    params = inspect.signature(ISRMiddleware.__init__).parameters.values()
    return {
        p.name.upper(): p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _CODE_ONLY
    }


def middleware_options() -> dict[str, Any]:
    """``settings.ISR`` as :class:`ISRMiddleware` keyword arguments, checked.

    Without ``STORE``, the store is ``file://<BASE_DIR>/.isr-cache`` when the settings
    have a ``BASE_DIR``, else the core's default.
    """
    config = getattr(settings, "ISR", {})
    if not isinstance(config, dict):
        raise ImproperlyConfigured("settings.ISR must be a dict, e.g. {'STORE': 'file:///...'}")
    names = option_names()
    options: dict[str, Any] = {}
    for key, value in config.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise ImproperlyConfigured(f"settings.ISR: unknown key {key!r}; known keys: {known}")
        check = CHECKS.get(key)
        if check is not None and not check[0](value):
            raise ImproperlyConfigured(f"settings.ISR[{key!r}] must be {check[1]}, got {value!r}")
        if key in ("TRUSTED_HOSTS", "QUERY_PARAMS") and value is not None:
            value = list(value)
        elif key == "BYPASS_COOKIES":
            value = tuple(value)
        options[names[key]] = value
    base_dir = getattr(settings, "BASE_DIR", None)
    if "store" not in options and base_dir is not None:
        options["store"] = "file://" + os.path.join(str(base_dir), ".isr-cache")
    return options
