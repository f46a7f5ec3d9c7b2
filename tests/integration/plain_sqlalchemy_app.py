"""A Flask app on plain SQLAlchemy: a module-level engine, no Flask-SQLAlchemy.

``PLAIN_ENGINES=explicit`` passes the engine as ``GuniTune(app, engines=[...])``;
otherwise gunitune does not know it. ``DATABASE_URL`` is used as given.
"""

from __future__ import annotations

import os

from flask import Flask
from sqlalchemy import create_engine, text

from gunitune import GuniTune

SLEEP = float(os.environ.get("PLAIN_SLEEP", "0.1"))
engine = create_engine(os.environ["DATABASE_URL"], pool_size=4, max_overflow=6, pool_timeout=30)
app = Flask(__name__)
tune = GuniTune(app, engines=[engine] if os.environ.get("PLAIN_ENGINES") == "explicit" else ())


@app.get("/io")
def io() -> str:
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(:s)"), {"s": SLEEP})
        driver = conn.dialect.driver
    return f"ok {driver}\n"


@app.get("/health")
@tune.exempt
def health() -> str:
    return "ok\n"
