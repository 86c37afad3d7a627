"""`python -m gateway`: serve the gateway where the settings say (API_PORT, BIND_HOST).

The reference backend's gateway listened on `API_PORT`; `uvicorn gateway.main:app` takes its port
from its own flags only, so this entry point reads the settings and hands them to uvicorn.
"""

from __future__ import annotations

import argparse

import uvicorn

from gateway.settings import GatewaySettings


def main(argv: list[str] | None = None) -> None:
    options = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.splitlines()[0])
    options.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = options.parse_args(argv)
    settings = GatewaySettings()
    # proxy_headers off: uvicorn would trust X-Forwarded-For from 127.0.0.1 by default; the app
    # trusts it from FORWARDED_ALLOW_IPS only (gateway/main.py).
    uvicorn.run(
        "gateway.main:app",
        host=settings.bind_host,
        port=settings.api_port,
        log_level=args.log_level,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
