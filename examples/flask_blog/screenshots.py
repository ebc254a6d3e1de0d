"""Screenshots of the example blog in headless Chromium, to look at it as a visitor does.

    python examples/flask_blog/screenshots.py [--out DIR] [--chromium /usr/bin/chromium]

Starts the blog under gunicorn on a free loopback port (its own database and file store
in a temporary directory), then captures: the listing with its "try ISR" panel, a post,
the edit form, the "saved" page watching the post come back regenerated, and the post
afterwards. Prints where the PNG files are; nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(base: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/clock", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the blog did not come up")


def shoot(chromium: str, url: str, png: Path, size: str, budget_ms: int = 3000) -> None:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        subprocess.run(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--virtual-time-budget={budget_ms}",
                f"--screenshot={png}",
                url,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=90,
        )
    print(png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="blog-screenshots-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="blog-run-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "BLOG_DB": str(work / "blog.db"),
        "ISR_STORE": f"file://{work / 'store'}",
    }
    cmd = [sys.executable, "-m", "gunicorn", "-c", "examples/flask_blog/gunicorn.conf.py"]
    cmd += ["--bind", f"127.0.0.1:{port}", "-w", "2"]
    with open(work / "gunicorn.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_up(base, proc)
        slug = "memory-cache-worker-1"
        for path in ("/", f"/posts/{slug}"):  # fill the cache, so the shots are HITs
            urllib.request.urlopen(base + path, timeout=10).close()
        time.sleep(3)  # so "rendered ... ago" shows a few seconds
        shoot(args.chromium, base + "/", out / "1-listing.png", "1100,1300")
        shoot(args.chromium, base + f"/posts/{slug}", out / "2-post.png", "1100,900")
        shoot(args.chromium, base + f"/edit/{slug}", out / "3-edit-form.png", "1100,900")
        form = urllib.parse.urlencode(
            {"title": "Post 1: edited to watch it regenerate", "body": "New body.",
             "password": os.environ.get("BLOG_PASSWORD", "letmein")}
        ).encode()  # fmt: skip

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a: object, **k: object) -> None:
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            opener.open(base + f"/edit/{slug}", data=form, timeout=10)
            raise SystemExit("the edit did not redirect")
        except urllib.error.HTTPError as redirect:
            location = redirect.headers["Location"]
        shoot(args.chromium, base + location, out / "4-saved-regenerating.png", "1100,700", 8000)
        shoot(args.chromium, base + f"/posts/{slug}", out / "5-post-after-edit.png", "1100,900")
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
