"""Pure logic of gunitune: no gevent, Flask, Gunicorn or SQLAlchemy imports here.

Everything in this package is unit-testable without a server; the adapters in
``gunitune`` feed it measurements and enforce its decisions.
"""
