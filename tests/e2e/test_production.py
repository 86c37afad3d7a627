"""The stack on the production parts: PostgreSQL instance storage and Azure Blob (Azurite).

README, Layout: the end-to-end request runs on the embedded default (tests/e2e/test_gateway.py
and the others) and here on PostgreSQL and Azurite: the run is read back from PostgreSQL's own
tables and the artifacts from the Azurite container, so a stack that fell back to SQLite or the
local folder fails here.

The request runs on the instant image backends: what is checked here is where things are stored
and that they stay there, not pixels (the classical stand-ins' images and fidelity are
test_gateway's, through the same `full_request_completes`). The sizes, the signed manifests and
the check's verdict still come back through PostgreSQL and Azurite. No re-generation sensor: the
instant backdrop fails the fidelity check (by design), and a re-generation would add a run.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import psycopg2
import pytest
from azure.storage.blob import ContainerClient
from PIL import Image

from jewel_dagster.provenance.reader import read_manifest
from tests.support.e2e_flows import full_request_completes
from tests.support.e2e_stack import running_stack, runs_of
from tests.support.infra import azurite, postgres_database

pytestmark = pytest.mark.e2e


def test_postgres_and_azurite_survive_a_restart(tmp_path: Path) -> None:
    with postgres_database() as pg_url, azurite(tmp_path / "azurite") as connection:
        env = {
            "DAGSTER_PG_URL": pg_url,
            "AZURE_STORAGE_CONNECTION_STRING": connection,
            "LOCAL_BACKENDS": "instant",
            "REGENERATION_SENSOR_ENABLED": "false",
        }
        with running_stack(tmp_path / "stack", env) as stack:
            assert "postgres" in (Path(stack.env["DAGSTER_HOME"]) / "dagster.yaml").read_text()
            with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
                final = full_request_completes(client, fidelity=False)
                result = final["result"]
                assert result["imageUri"].startswith("azure://jewelry-uploads/requests/")
                flux = httpx.get(result["flux_result_url"], timeout=10)
                assert flux.status_code == 200
                assert Image.open(io.BytesIO(flux.content)).size == (2000, 2667)
                # Issue 33: the signed URL serves the signed PNG; the base64 is the signed JPEG.
                for data in (flux.content, base64.b64decode(result["flux_result_base64"])):
                    report = read_manifest(data)
                    assert report is not None and report.valid and report.made_with_ai
                    assert report.generation()["workflowId"] == final["workflowId"]
            assert not Path(stack.env["LOCAL_BLOB_ROOT"]).exists(), "nothing may go to the local folder"
            (run,) = runs_of(stack.dagster_url, final["workflowId"])
            with psycopg2.connect(pg_url, connect_timeout=5) as conn, conn.cursor() as cur:
                cur.execute("SELECT status FROM runs WHERE run_id = %s", (run["runId"],))  # Dagster's run table
                assert cur.fetchall() == [("SUCCESS",)]
            container = ContainerClient.from_connection_string(connection, "jewelry-uploads")
            names = {b.name for b in container.list_blobs(name_starts_with=f"requests/{final['workflowId']}/")}
            run_folder = f"requests/{final['workflowId']}/{run['runId']}"
            for artifact in ("flux_generation.png", "gemini_generation.png", "jewelry_mask.png"):
                assert f"{run_folder}/{artifact}" in names, sorted(names)
            stored = container.download_blob(f"{run_folder}/flux_generation.png").readall()
            assert stored == flux.content  # the blob, its signed URL: the same signed bytes

            # The gateway and the webserver go away, and a new gateway answers from the storage
            # alone (STATUS_SOURCE=storage): the run, the check's verdict and the failure texts from
            # PostgreSQL, the images from Azurite; nothing of the request is left in a gateway's
            # memory (its result cache) nor behind Dagster's GraphQL. (A fresh gateway answered
            # 503 here while the webserver was down, before the verdict was read from the storage.)
            # The daemon and code server keep running: they hold no copy of the storage, and
            # restarting them cost ~9 CPU-s of imports here (their start on a PostgreSQL schema
            # another process made is test_compose_processes').
            stack.stop(("gateway", "webserver"))
            stack.start_gateway()
            with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
                again = client.get(f"/workflow/{final['workflowId']}")
                assert again.status_code == 200
                body = again.json()
                assert body["status"] == "COMPLETED" and body["progress"] == 100
                for key in ("flux_result_base64", "gemini_result_base64", "flux_metrics", "checks"):
                    assert body["result"][key] == result[key]
