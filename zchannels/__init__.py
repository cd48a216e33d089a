"""zchannels: a brokerless channel layer for Django Channels, built on ZeroMQ.

``zchannels.layer.ZeroMQChannelLayer`` is what Django loads; see README.md.
"""

__version__ = "0.1.0"
