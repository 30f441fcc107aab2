"""From outbox row to delivered message."""
