"""The live-blog demo project: a Django + Channels site on a zchannels cluster.

One site, run on every host of the cluster (``run.py`` starts it): each host's
Daphne and ``runworker thumbnails`` talk to that host's ``znode`` over ipc; the
nodes form one cluster. Readers, chat rooms and thumbnail jobs span the hosts.
"""
