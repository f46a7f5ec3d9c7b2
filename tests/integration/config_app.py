"""A Flask-SQLAlchemy app whose gunitune settings live in ``app.config`` only."""

from __future__ import annotations

import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from gunitune import GuniTune

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": 3, "max_overflow": 3}
app.config["GUNITUNE_QUEUE_TIMEOUT"] = "7.5"
app.config["GUNITUNE_FAST_SHARE"] = 0.5
app.config["GUNITUNE_STATS_PATH"] = "/_gunitune"
db = SQLAlchemy(app)
GuniTune(app, db)


@app.get("/hello")
def hello() -> str:
    return "hello\n"


@app.get("/one")
def one() -> str:
    with db.engine.connect() as conn:
        return f"{conn.execute(text('SELECT 1')).scalar()}\n"
