"""Publish one post to the ``blog`` group: ``python -m lan_site.post --node ENDPOINT TEXT``."""

from __future__ import annotations

import argparse
import json

from asgiref.sync import async_to_sync

from zchannels.layer import ZeroMQChannelLayer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", required=True)
    parser.add_argument("text")
    args = parser.parse_args()
    layer = ZeroMQChannelLayer(node=args.node)
    async_to_sync(layer.group_send)("blog", {"type": "blog.post", "post": {"text": args.text}})
    print(json.dumps({"event": "sent"}), flush=True)


if __name__ == "__main__":
    main()
