"""An app whose ``app.config`` holds a bad gunitune setting: ``GuniTune(app)`` refuses it
while a worker imports the app, and the worker must say so in one line."""

from __future__ import annotations

from flask import Flask

from gunitune import GuniTune

app = Flask(__name__)
app.config["GUNITUNE_TIMEOUT"] = 1  # healthy workers would be killed: refused
GuniTune(app)
