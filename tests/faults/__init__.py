"""A Jepsen-style fault test of the cluster over real processes on loopback.

``schedule`` (the seeded faults), ``workload`` (producer and consumer
processes that log everything they do), ``cluster`` (carrying out a run:
``znode`` processes, workload, faults, status samples), ``checker`` (the
invariants, over what every process logged); ``python -m tests.faults``
runs and reports. docs/cluster.md, "Fault testing", says how to run it and
what it checks.
"""
