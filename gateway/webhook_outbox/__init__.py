"""Webhooks that never give up: a durable outbox in the blob store and the dispatcher that drains it.

    backoff.py      the wait before each next attempt: exponential, capped, full jitter
    events.py       which events a caller asked for; `started`/`progress` seen on running runs
    outbox.py       a delivery's record, its pending marker and its index, in the blob store
    sender.py       one signed POST (the URL checked again, the connection pinned)
    dispatcher.py   attempts what is due, one replica per attempt (gateway/claims.py)

gateway/webhooks.py watches Dagster for runs that owe a webhook and puts deliveries here.
"""
