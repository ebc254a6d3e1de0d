"""Pre-rendering pages into the store at deploy time (Next.js ``generateStaticParams``).

    report = middleware.prebuild(["/", "/posts/a", "/posts/b"], host="www.example.com")
    print(report.summary())   # "3 built, 0 skipped, 0 failed in 0.41 s"

Each path is rendered through the application exactly as a background
regeneration would be (clean environ, no visitor) and stored under the key a
visitor to ``scheme://host/path`` will look up, so the running server serves it
as a HIT without rendering it again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from .errors import StoreError
from .invalidation import current_middleware
from .keys import render_environ, request_key
from .render import capture
from .stores.breaker import one_wait

if TYPE_CHECKING:
    from .middleware import ISRMiddleware


@dataclasses.dataclass
class PrebuildReport:
    """What :meth:`ISRMiddleware.prebuild` did: lists of paths, and of ``(path, reason)``."""

    built: list[str] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        return (
            f"{len(self.built)} built, {len(self.skipped)} skipped (did not opt in), "
            f"{len(self.failed)} failed in {self.seconds:.2f} s"
        )


@one_wait()
def prebuild_one(
    mw: ISRMiddleware, path: str, host: str, scheme: str, script_name: str = ""
) -> tuple[str, str]:
    """Render and store one path (the application's own, below ``script_name``).
    Returns ``("built" | "skipped" | "failed", reason)``."""
    if not path.startswith("/"):
        return "failed", "path must start with '/'"
    from werkzeug.test import EnvironBuilder  # pulls in ssl: not at import time

    environ = EnvironBuilder(path=path, base_url=f"{scheme}://{host}{script_name}").get_environ()
    rk = request_key(environ, query_params=mw.query_params)
    if rk is None:
        return "failed", f"invalid host {host!r}"
    env = render_environ(rk, environ)
    try:
        started = mw.store.stamp()  # the clock invalidations are stamped with
    except StoreError as exc:  # a failed page in the report, not a traceback
        return "failed", f"the store: {exc}"
    current = current_middleware.set(mw)  # wsgi_isr.cached in the render uses this store
    try:
        captured = capture(mw.app, env, mw.max_entry_bytes)
    except Exception as exc:  # report, do not abort the whole build
        return "failed", f"{type(exc).__name__}: {exc}"
    finally:
        current_middleware.reset(current)
    captured.drain()
    decision = mw.regen.decide(captured)
    if decision.failed:
        return "failed", decision.reason
    if not decision.opted_in:
        if captured.status[:1] == "4":  # asked for, yet absent or refused: not a skip
            return "failed", f"answered {captured.status}"
        return "skipped", decision.reason
    if not decision.store:
        return "failed", decision.reason
    settled = mw.regen.settle(
        rk, rk.key, (), captured, started, env, foreground=False, decision=decision
    )
    # waiters and processes that know a regeneration of the page is running look again
    mw.landings.notify(settled.key)
    return ("built", "") if settled.entry is not None else ("failed", "the store refused the write")


def prebuild(
    mw: ISRMiddleware,
    paths: Iterable[str],
    *,
    host: str = "localhost",
    scheme: str = "http",
    concurrency: int = 4,
    progress: Callable[[str, str], None] | None = None,
    script_name: str = "",
) -> PrebuildReport:
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if scheme not in ("http", "https"):
        raise ValueError("scheme must be 'http' or 'https'")
    script_name = script_name.rstrip("/")
    if script_name and not script_name.startswith("/"):
        raise ValueError(f"script_name must start with '/', got {script_name!r}")
    report = PrebuildReport()
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="wsgi_isr-build") as pool:
        todo = list(dict.fromkeys(paths))
        for path, (outcome, reason) in zip(
            todo,
            pool.map(lambda p: prebuild_one(mw, p, host, scheme, script_name), todo),
            strict=True,
        ):
            if outcome == "built":
                report.built.append(path)
            elif outcome == "skipped":
                report.skipped.append((path, reason))
            else:
                report.failed.append((path, reason))
            if progress is not None:
                progress(path, outcome)
    report.seconds = time.monotonic() - start
    return report
