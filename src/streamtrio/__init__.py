"""streamtrio: stream processing for Kafka on trio."""

from ._version import __version__

__all__ = ["__version__"]
