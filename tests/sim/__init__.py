"""A deterministic whole-cluster simulation of zchannels (FoundationDB's
simulator and TigerBeetle's VOPR are the models; STYLE.md §1 and §6).

Every node (a pure ``ClusterNode``; alone, it runs only its core), every
client process (``client``:
the client protocol as ``zchannels.connection`` speaks it, on the real
``zchannels.flow.Flow``) and the network between them (``world``) run in one
process on one simulated clock, driven by a seeded schedule of workload and
faults (``schedule``). ``check`` holds what was observed and the invariants;
``explore`` runs many seeds, replays one exactly and shrinks a failing
schedule; ``python -m tests.sim`` is its command line.

Same seed and schedule, same run: the byte-identical event trace is tested.
"""
