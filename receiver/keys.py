"""Typed application keys: the one place that names what `create_app` shares with handlers."""

from __future__ import annotations

from aiohttp import web

from notifiers.log_worker import OutboxLogWorker
from receiver.settings import Settings
from receiver.store import Store

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
WORKER = web.AppKey("worker", OutboxLogWorker)
