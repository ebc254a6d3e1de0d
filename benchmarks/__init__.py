"""The side-by-side benchmark harness of wsgi_isr: see ``benchmarks/README.md``."""
