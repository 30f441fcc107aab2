"""Durable storage of events, job state and the outbox."""

from receiver.store.base import EventRow, Ingested, OutboxItem, Store
from receiver.store.polling import TrackedJob
from receiver.store.writer import StoreUnavailable

__all__ = ["EventRow", "Ingested", "OutboxItem", "Store", "StoreUnavailable", "TrackedJob"]
