"""The demo app, with psycopg2's gevent wait callback taken away again at import.

Stands for an app that undoes the green driver (or a driver that cannot yield):
the worker's start-up check must refuse it with one clear line.
"""

import psycopg2.extensions

from demo_app import app

psycopg2.extensions.set_wait_callback(None)

__all__ = ["app"]
