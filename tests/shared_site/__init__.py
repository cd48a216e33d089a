"""A minimal Channels site for the shared-node tests, run as production runs
it: ``uvicorn --workers 4`` or ``gunicorn -k uvicorn_worker.UvicornWorker -w 4``
serving ``shared_site.asgi:application``, with ``CONFIG = {}``.

- ``/ws/room/``: a WebSocket reader; it joins the ``room`` group, says which
  worker serves it (``{"pid": ...}``), then sends every room message as JSON.
- ``/post/?text=...``: a plain sync view that calls ``group_send`` through
  ``async_to_sync`` and answers ``{"pid": ...}`` (503 with the error when
  the send's outcome is unknown: the node died under it); ``/health/``
  answers ``ok``.
- ``python -m shared_site.post TEXT``: the same ``group_send`` from another
  process (a management command, a Celery worker).
"""
