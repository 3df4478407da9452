"""`kbot serve`: the long-running service — poll the lists, run jobs, deliver reports, read
mail commands, serve the web pages — with heartbeats in the store and a graceful shutdown.

    loop.py   the Service: its threads (intake, jobs, web), signals, heartbeats
    logs.py   structured (JSON lines) or plain logging for a service
    cli.py    `kbot serve`, `kbot status`
"""
