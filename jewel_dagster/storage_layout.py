"""Every blob key, built here and nowhere else: the pipeline writes what the gateway reads.

The two sides share one container. Retention writes the tombstones the gateway answers 410
from, the gateway writes the webhook URLs retention removes, the IO manager writes the artifacts
the gateway serves: each key is spelled once, in this module, so neither side can drift from the
other. tests/unit/test_architecture.py fails on a key prefix spelled as a string anywhere else.
Free of Dagster (import-linter keeps it so): the gateway's request path imports it.

The container::

    requests/<id>/upload                     the uploaded photo (gateway)
    requests/<id>/strokes/<key>.json         one launch's brush strokes (gateway -> refined_mask)
    requests/<id>/<run id>/<asset>.<ext>     a run's artifacts (IO manager -> gateway); .jpg renditions
    requests/<id>/webhooks/<delivery id>.json  one webhook delivery: event, status, attempts (gateway)
    requests/<id>/webhooks/<delivery id>.body  the JSON that delivery POSTs (gateway)
    removed/<id>.json                        tombstone of a request retention removed (pipeline -> gateway)
    webhooks/<key>.json                      a webhook's full URL (gateway -> retention removes)
    webhook-outbox/<delivery id>.json        a delivery still owed: its workflow and full URL (gateway)
    webhook-deliveries/<delivery id>.json    which workflow a delivery id belongs to (gateway)
    claims/<name>.<generation>.json          cross-replica claims (gateway; retention removes)
    starts/<id>.json                         background starts (gateway)
    start-cancels/<id>.json, start-gateways/<gateway id>.json
    compute-logs/...                         step logs in Azure (the instance's compute log manager)
"""

from __future__ import annotations

import re

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RUN_ID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

REQUESTS_PREFIX = "requests/"
TOMBSTONE_PREFIX = "removed/"
WEBHOOK_URL_PREFIX = "webhooks/"
CLAIMS_PREFIX = "claims/"
WEBHOOK_OUTBOX_PREFIX = "webhook-outbox/"
WEBHOOK_INDEX_PREFIX = "webhook-deliveries/"
PENDING_START_PREFIX = "starts/"
START_CANCEL_PREFIX = "start-cancels/"
START_HEARTBEAT_PREFIX = "start-gateways/"
# The compute log manager's prefix (a folder name, as dagster-azure takes it: no slash).
COMPUTE_LOGS_PREFIX = "compute-logs"
# Blobs that belong to no request folder, removed by retention once older than its cutoff.
LEFTOVER_PREFIXES = (CLAIMS_PREFIX, WEBHOOK_URL_PREFIX, WEBHOOK_OUTBOX_PREFIX, WEBHOOK_INDEX_PREFIX)

# A run's PNG artifact (`requests/<id>/<run id>/<asset>.png`), or one stored before runs had
# folders (`requests/<id>/<asset>.png`). Matched with fullmatch.
ARTIFACT_PNG_PATH = re.compile(
    REQUESTS_PREFIX + r"(?P<rid>[^/]+)/(?:(?P<run>" + RUN_ID_PATTERN + r")/)?(?P<name>[a-z_]+)\.png"
)


class BlobStoreError(Exception):
    """Every error of the blob store (resources/blob_store.py draws the hierarchy)."""


class ForeignUriError(BlobStoreError):
    """A URI or key outside our container's layout: raised here for a malformed key."""


def check_path(path: str) -> str:
    """A blob path is '/'-joined plain segments: no '..', no empty or hidden parts."""
    segments = path.split("/")
    if not path or not all(_SEGMENT.match(s) and s not in (".", "..") for s in segments):
        raise ForeignUriError(f"not a valid blob path: {path!r}")
    return path


def check_prefix(prefix: str) -> str:
    """A folder prefix: a valid blob path followed by '/', so `requests/a` never matches `requests/ab`."""
    if not prefix.endswith("/"):
        raise ForeignUriError(f"a prefix ends with '/': {prefix!r}")
    check_path(prefix[:-1])
    return prefix


# ---------------------------------------------------------------- one request's folder


def request_folder(request_id: str) -> str:
    if not REQUEST_ID.match(request_id):
        raise ForeignUriError(f"not a valid request id: {request_id!r}")
    return f"{REQUESTS_PREFIX}{request_id}"


def request_prefix(request_id: str) -> str:
    """Everything of one request (what retention removes): its folder with the trailing '/'."""
    return f"{request_folder(request_id)}/"


def upload_path(request_id: str) -> str:
    """Where the uploaded photo lives."""
    return f"{request_folder(request_id)}/upload"


def strokes_path(request_id: str, key: str) -> str:
    """Where one launch's brush strokes live (JSON); a new key per launch, so a rerun of an
    earlier run reads the strokes it was launched with."""
    return check_path(f"{request_folder(request_id)}/strokes/{key}.json")


def artifact_path(request_id: str, name: str, extension: str, run_id: str | None = None) -> str:
    """Where one run's materialization of a request's artifact lives; the gateway and the IO
    manager share this. Each run writes its own folder, so no run replaces a blob that an earlier
    materialization points to. Without a run id: the flat path of artifacts stored before runs had
    folders, still read as a fallback."""
    if run_id is None:
        return check_path(f"{request_folder(request_id)}/{name}.{extension}")
    return check_path(f"{request_folder(request_id)}/{run_id}/{name}.{extension}")


def jpeg_rendition_path(png_path: str) -> str:
    """Where the JPEG rendition of a stored PNG artifact lives (contract.JPEG_RENDITION_ASSETS)."""
    if not png_path.endswith(".png"):
        raise ForeignUriError(f"only a PNG artifact has a JPEG rendition: {png_path!r}")
    return check_path(f"{png_path[: -len('.png')]}.jpg")


def webhook_record_path(workflow_id: str, delivery_id: str) -> str:
    """One webhook delivery of a request (the redacted URL, event, attempts, status); a run's
    final-state webhook is named by the run id, so its record path is what it was before outboxes."""
    return f"{REQUESTS_PREFIX}{workflow_id}/webhooks/{delivery_id}.json"


def webhook_body_path(workflow_id: str, delivery_id: str) -> str:
    """The JSON a delivery POSTs (a final state may carry base64 images: MBs), apart from its
    record, which is rewritten on every attempt and read by every listing."""
    return f"{REQUESTS_PREFIX}{workflow_id}/webhooks/{delivery_id}.body"


def webhook_records_prefix(workflow_id: str) -> str:
    """Every webhook delivery of one request (GET /webhooks/deliveries)."""
    return check_prefix(f"{request_folder(workflow_id)}/webhooks/")


# ---------------------------------------------------------------- outside request folders


def tombstone_path(request_id: str) -> str:
    """Where the retention job records that it removed a request, so the gateway answers 410
    Gone rather than 404 (a tiny JSON: when, whose). Expired with the tombstone lifetime."""
    request_folder(request_id)  # validates the id
    return f"{TOMBSTONE_PREFIX}{request_id}.json"


def webhook_url_path(key: str) -> str:
    """A webhook's full URL (with the caller's credentials), named by the run's random key tag."""
    return f"{WEBHOOK_URL_PREFIX}{key}.json"


def webhook_outbox_path(delivery_id: str) -> str:
    """A delivery still owed (deleted when it ends): what the outbox dispatcher lists each poll."""
    return check_path(f"{WEBHOOK_OUTBOX_PREFIX}{delivery_id}.json")


def webhook_index_path(delivery_id: str) -> str:
    """Which request a delivery id belongs to, so `POST /webhooks/deliveries/{id}/redeliver` finds it."""
    return check_path(f"{WEBHOOK_INDEX_PREFIX}{delivery_id}.json")


def webhook_attempt_claim(delivery_id: str, attempt: int) -> str:
    """The claim name of one attempt of a delivery: one replica makes attempt n."""
    return f"webhook-attempts/{delivery_id}/{attempt}"


def claim_path(name: str, generation: int) -> str:
    """One generation of a cross-replica claim (gateway/claims.py)."""
    return f"{CLAIMS_PREFIX}{name}.{generation}.json"


def webhook_delivery_claim(run_id: str) -> str:
    """The claim name of one run's webhook delivery: one replica delivers."""
    return f"webhooks/{run_id}"


def idempotency_claim(digest: str) -> str:
    """The claim name of one Idempotency-Key (its digest): one replica launches."""
    return f"idempotency/{digest}"


def continue_claim(run_id: str) -> str:
    """The claim name of continuing one run with /workflow/generate: one replica launches."""
    return f"continue/{run_id}"


def start_takeover_claim(workflow_id: str, dead_gateway: str) -> str:
    """The claim name of taking over a stopped gateway's background start."""
    return f"start-takeover/{workflow_id}.{dead_gateway}"


def pending_start_path(workflow_id: str) -> str:
    request_folder(workflow_id)  # validates the id
    return f"{PENDING_START_PREFIX}{workflow_id}.json"


def pending_start_id(path: str) -> str:
    """The workflow id a pending start's blob path names (the inverse of `pending_start_path`)."""
    return path[len(PENDING_START_PREFIX) :].removesuffix(".json")


def start_cancel_path(workflow_id: str) -> str:
    """A cancel is a blob of its own, created once and never rewritten: no write of the record
    (a takeover, a give-up) can undo it."""
    request_folder(workflow_id)
    return f"{START_CANCEL_PREFIX}{workflow_id}.json"


def start_heartbeat_path(gateway_id: str) -> str:
    """A gateway's heartbeat, so others know when to take its background starts over."""
    return f"{START_HEARTBEAT_PREFIX}{gateway_id}.json"
