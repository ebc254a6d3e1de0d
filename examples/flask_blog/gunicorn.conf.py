# gunicorn -c examples/flask_blog/gunicorn.conf.py
wsgi_app = "examples.flask_blog.app:create_app()"
bind = "127.0.0.1:8000"
workers = 4
worker_class = "gevent"
graceful_timeout = 30
accesslog = "-"

# let background regenerations finish when a worker stops (SIGTERM, max_requests, HUP)
from wsgi_isr.gunicorn import worker_exit  # noqa: E402, F401
