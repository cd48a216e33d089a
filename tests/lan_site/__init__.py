"""A minimal Django + Channels site for the LAN end-to-end test.

One WebSocket route, ``/ws/blog/``: each connection joins the ``blog`` group
and receives every post as JSON. ``python -m lan_site.post`` publishes a post
with ``group_send`` from any process; ``python -m lan_site.reader URL``
connects a WebSocket reader and prints what it receives as JSON lines. The
layer talks to the host's ``znode`` at ``$ZCHANNELS_NODE``.
"""
