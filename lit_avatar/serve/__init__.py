"""Live sessions: a browser's microphone in, the avatar's video out, on AvatarStreamer (no second block loop).

`lit-avatar serve` (cli.py) loads one checkpoint and serves a one-file page (static/index.html) and a
WebSocket endpoint; every connection gets its own AvatarStreamer over the shared weights (session.py), and
its audio backlog is bounded by a drop-oldest policy (intake.py).
"""
