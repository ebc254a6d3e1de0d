# gunicorn -c examples/django_site/gunicorn.conf.py     -> http://127.0.0.1:8000
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
chdir = here
wsgi_app = "mysite.wsgi:application"
bind = "127.0.0.1:8000"
workers = 2
worker_class = "gevent"
graceful_timeout = 30
accesslog = "-"

# finish regenerations on worker exit; with PROMETHEUS_MULTIPROC_DIR, metrics of all workers
from wsgi_isr.gunicorn import child_exit, worker_exit  # noqa: E402, F401
from wsgi_isr.gunicorn import on_starting as isr_on_starting  # noqa: E402


def on_starting(server):
    isr_on_starting(server)
    # once, in the master, before any worker: create the database and its demo rows
    manage = os.path.join(here, "manage.py")
    subprocess.run([sys.executable, manage, "demo_setup"], check=True)
