"""ptqflow.statistics: reduce-node statistics collection and the saved Statistics."""

from ptqflow.statistics.store import Statistics

__all__ = ["Statistics"]
