"""The workflow service layer: what the /workflow routes do, callable without HTTP.

The routes (gateway/routes/) parse, call one function here and answer. The layer raises
`HTTPException` with the API's fixed messages (errors.py), so a test calls a function and
checks the status and detail without a server; it owns everything that touches the blob store
for a workflow:

    errors.py       the 502/503 answer for Dagster trouble and the 404 for an unknown workflow
    ownership.py    whose workflow it is: a run's owner tag, or its pending background start
    tombstones.py   the 410 of a workflow retention removed
    idempotency.py  Idempotency-Key: striped in-process locks and cross-replica claims
    launch.py       one launch: partition, run tags, upload/strokes/webhook blobs, or a queued start
    begin.py        /start, /preprocess and /generate: what each launches, with which inputs
    cancel.py       terminating a run, or cancelling a start before its run exists
    reading.py      the state of one workflow, and one stored artifact
"""
