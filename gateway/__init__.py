"""FastAPI gateway that keeps the Temporal backend's REST contract on top of Dagster."""
