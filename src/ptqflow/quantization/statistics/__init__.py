"""ptqflow.quantization.statistics: reduce-node statistics collection and the saved Statistics."""

from ptqflow.quantization.statistics.store import Statistics

__all__ = ["Statistics"]
