"""gunitune: make a Flask + SQLAlchemy app behave under overload on Gunicorn + gevent."""

__version__ = "0.1.0"
