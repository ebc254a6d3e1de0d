"""The blog's data layer: SQLite, 10,000 posts generated deterministically.

Every helper that loads a post tags the page being rendered with ``post-<slug>``
(``wsgi_isr.tag``), so any page that shows a post — its own page, a listing, a
"related posts" widget — is invalidated when that post changes. Called inside a
cached function (``isr.cached`` in ``app.py``), the tag goes to the cached value and,
through it, to every page that uses the value.

``queries`` counts the SELECT statements run in this process (the seed benchmark
compares regenerations with and without the data cache).
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass

import wsgi_isr

POSTS = 10_000
PER_PAGE = 20
CATEGORIES = ("python", "web", "caching", "databases", "ops", "testing", "design", "security")
_WORDS = (
    "cache",
    "stale",
    "fresh",
    "render",
    "page",
    "tag",
    "worker",
    "greenlet",
    "request",
    "response",
    "header",
    "store",
    "redis",
    "file",
    "memory",
    "lock",
    "regenerate",
    "invalidate",
    "visitor",
    "server",
    "deploy",
    "static",
    "dynamic",
)


@dataclass(frozen=True)
class Post:
    id: int
    slug: str
    title: str
    body: str
    category: str
    updated: float


#: SELECT statements run over every connection of this process (one list: mutable).
queries = [0]
_queries_lock = threading.Lock()  # regenerations run in several threads


def _count(statement: str) -> None:
    if statement.lstrip()[:6].upper() == "SELECT":
        with _queries_lock:
            queries[0] += 1


def connect(path: str) -> sqlite3.Connection:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    db = sqlite3.connect(path, timeout=30, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.set_trace_callback(_count)
    return db


def ensure_schema(path: str, posts: int = POSTS) -> None:
    """Create and fill the database on first start (deterministic: seed 42).

    Several workers may start at once: the first one to take SQLite's write lock
    creates the table; the others find it filled.
    """
    db = connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        with db:
            db.execute("BEGIN IMMEDIATE")
            exists = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='posts'"
            ).fetchone()
            if exists:
                return
            db.execute(
                "CREATE TABLE posts (id INTEGER PRIMARY KEY, slug TEXT UNIQUE, title TEXT,"
                " body TEXT, category TEXT, updated REAL)"
            )
            rng = random.Random(42)
            now = time.time()
            rows = []
            for i in range(1, posts + 1):
                words = rng.choices(_WORDS, k=60)
                rows.append(
                    (
                        i,
                        f"{'-'.join(words[:3])}-{i}",
                        f"Post {i}: {' '.join(words[:4]).capitalize()}",
                        " ".join(words),
                        CATEGORIES[i % len(CATEGORIES)],
                        now,
                    )
                )
            db.executemany("INSERT INTO posts VALUES (?, ?, ?, ?, ?, ?)", rows)
    finally:
        db.close()


def _post(row: sqlite3.Row) -> Post:
    post = Post(**dict(row))
    wsgi_isr.tag(f"post-{post.slug}")  # whatever page shows this post depends on it
    return post


def get_post(db: sqlite3.Connection, slug: str) -> Post | None:
    row = db.execute("SELECT * FROM posts WHERE slug = ?", (slug,)).fetchone()
    return _post(row) if row else None


def categories(db: sqlite3.Connection) -> list[dict[str, object]]:
    """Every category with its number of posts (the sidebar)."""
    rows = db.execute("SELECT category, COUNT(*) AS n FROM posts GROUP BY category ORDER BY 1")
    return [{"name": r["category"], "posts": r["n"]} for r in rows]


def list_posts(db: sqlite3.Connection, page: int) -> list[Post]:
    rows = db.execute(
        "SELECT * FROM posts ORDER BY id LIMIT ? OFFSET ?", (PER_PAGE, (page - 1) * PER_PAGE)
    ).fetchall()
    return [_post(r) for r in rows]


def related_posts(db: sqlite3.Connection, slug: str, n: int = 3) -> list[Post]:
    """The next posts in the category of ``slug``: the widget that makes one edit reach
    many pages."""
    rows = db.execute(
        "SELECT p.* FROM posts p JOIN posts o ON o.slug = ? AND p.category = o.category"
        " AND p.id != o.id ORDER BY (p.id - o.id + ?) % ? LIMIT ?",
        (slug, POSTS, POSTS, n),
    ).fetchall()
    return [_post(r) for r in rows]


def top_slugs(db: sqlite3.Connection, n: int = 100) -> list[str]:
    return [r["slug"] for r in db.execute("SELECT slug FROM posts ORDER BY id LIMIT ?", (n,))]


def update_post(db: sqlite3.Connection, slug: str, title: str, body: str) -> bool:
    with db:
        cur = db.execute(
            "UPDATE posts SET title = ?, body = ?, updated = ? WHERE slug = ?",
            (title, body, time.time(), slug),
        )
    return cur.rowcount == 1
