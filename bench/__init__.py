"""Benchmark harness: zchannels against channels_redis, InMemory and bare pyzmq.

Run it as ``bench/run`` (sets up the venv and redis-server) or ``python -m bench``
from the repository root. See docs/benchmarks.md for what each scenario measures.
"""
