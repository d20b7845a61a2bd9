"""Benchmarks: streamtrio against faust-streaming, Quix Streams and the raw confluent-kafka loop.

``python -m benchmarks --help``; the method and the latest results are in
``docs/benchmarks.md``. Standard library only at import time: the system
scripts in this directory run in other virtual environments.
"""
