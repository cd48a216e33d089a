"""The zchannels node: queues, sessions, groups (``core`` and its parts), the
asyncio shell (``server``), configuration (``config``) and ``znode`` (``cli``).

Installed as ``zchannels.node``.
"""
