"""The HTML dashboard at `/`: recent jobs, failures, notification health, one job's timeline (see routes)."""

from receiver.dashboard.routes import add_dashboard

__all__ = ["add_dashboard"]
