"""Cluster keys: CurveZMQ key pairs shared by the nodes (and TCP clients) of a cluster.

Owns: the key file format, making one (``znode keygen``), reading one with
its permission check, fingerprints, the keyring a node holds during a
rollover, and which endpoints need a key at all (``loopback_only``: the
node's bind policy and the Django checks share it). Does not own: sockets
(``zchannels.node.security`` applies keys to them) or who is admitted (the
ZAP handler there).

A cluster key is one CurveZMQ key pair (Curve25519; RFC 26/CURVEZMQ). Every
node serves its peer socket (and its TCP client endpoints) with it, connects
to the others with it, and admits only connections whose client key is a key
of its keyring — so only holders of the file (which holds the secret half)
complete a handshake; traffic is encrypted and authenticated both ways.

File format (JSON, owner-only permissions, refused otherwise)::

    {"zchannels_cluster_key": 1, "public": "<40 chars Z85>", "secret": "<40 chars Z85>"}

Rollover: a node holds the current key and the next (``--key-file`` twice);
it serves with the first, admits clients holding either, and when a peer
serves the other one it falls back to it, so nodes restarted one by one
with the two files swapped keep talking to each other throughout.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq

from .errors import ConfigError

_FORMAT = "zchannels_cluster_key"
_Z85_KEY_LEN = 40


class KeyFileError(ConfigError):
    """A key file that cannot be used (missing, unreadable, too open, malformed)."""


@dataclass(frozen=True, slots=True)
class ClusterKey:
    public: bytes  # Z85, 40 bytes
    secret: bytes  # Z85, 40 bytes

    @property
    def fingerprint(self) -> str:
        """What may be shown and announced (mDNS): a hash of the public half."""
        return hashlib.sha256(self.public).hexdigest()[:16]

    def __repr__(self) -> str:  # never print the secret half
        return f"ClusterKey(fingerprint={self.fingerprint})"

    @classmethod
    def generate(cls) -> ClusterKey:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)


@dataclass(frozen=True, slots=True)
class Keyring:
    """The keys a node holds: ``keys[0]`` is the one it serves with."""

    keys: tuple[ClusterKey, ...]

    @property
    def serving(self) -> ClusterKey:
        return self.keys[0]

    @property
    def publics(self) -> frozenset[bytes]:
        return frozenset(k.public for k in self.keys)

    @property
    def fingerprint(self) -> str:
        return self.serving.fingerprint

    @classmethod
    def load(cls, paths: Sequence[str | os.PathLike[str]]) -> Keyring:
        if not paths:
            raise KeyFileError("no key file given")
        return cls(tuple(read_key_file(p) for p in paths))


def write_key_file(path: str | os.PathLike[str], key: ClusterKey | None = None) -> ClusterKey:
    """Write a new key file readable by its owner only; never overwrites."""
    key = key or ClusterKey.generate()
    body = json.dumps(
        {_FORMAT: 1, "public": key.public.decode(), "secret": key.secret.decode()}, indent=1
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists: not overwriting a key file") from None
    with os.fdopen(fd, "w") as f:
        f.write(body + "\n")
    return key


def read_key_file(path: str | os.PathLike[str]) -> ClusterKey:
    """Read a key file, refusing one that others may read."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} is accessible by others (mode {stat.S_IMODE(mode):o}): "
            f"run chmod 600 {path}"
        )
    try:
        data = json.loads(text)
        if data.get(_FORMAT) != 1:
            raise ValueError("not a zchannels cluster key file")
        public, secret = data["public"].encode(), data["secret"].encode()
        if len(public) != _Z85_KEY_LEN or len(secret) != _Z85_KEY_LEN:
            raise ValueError("keys must be 40 Z85 characters")
        if zmq.curve_public(secret) != public:
            raise ValueError("the public key does not match the secret key")
    except (ValueError, KeyError, TypeError, AttributeError, zmq.ZMQError) as exc:
        raise KeyFileError(f"key file {path} is malformed: {exc}") from None
    return ClusterKey(public, secret)


def loopback_only(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address: an
    endpoint that needs no cluster key. Any other transport (tipc://,
    udp://, ...) counts as reaching beyond this host."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or a wildcard ("*"): beyond this host
