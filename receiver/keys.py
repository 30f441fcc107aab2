"""Typed application keys: the one place that names what `create_app` shares with handlers."""

from __future__ import annotations

from aiohttp import web

from notifiers.config import NotifierConfig
from notifiers.worker import DeliveryWorker
from receiver.poller import BytescalePoller
from receiver.settings import Settings
from receiver.store import Store

SETTINGS = web.AppKey("settings", Settings)
NOTIFIERS = web.AppKey("notifiers", NotifierConfig)
STORE = web.AppKey("store", Store)
WORKER = web.AppKey("worker", DeliveryWorker)
POLLERS = web.AppKey("pollers", dict[str, BytescalePoller])  # by account id
