"""The try-on web page: plain HTML, JS and CSS shipped inside the package, no build, no CDN."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"


def mount(app: FastAPI) -> None:
    """`/` serves the page, `/static/*` its script and styles (outside the OpenAPI schema)."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
