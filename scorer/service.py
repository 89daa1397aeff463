"""Deploying the scorer on Ray Serve, and swapping its model version live."""

from __future__ import annotations

from scorer.config import DeploymentConfig, ScorerConfig

APP_NAME = "scorer"


def deploy(
    cfg: ScorerConfig,
    deployment: DeploymentConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_name: str = APP_NAME,
) -> str:
    """Run (or update in place) the scorer application; return its HTTP base URL.

    Ray must be initialised. Re-deploying with only ``cfg`` changed reconfigures the running
    replicas (no restart): that is how a new model version goes live.
    """
    from ray import serve

    from scorer.app import Scorer

    serve.start(http_options={"host": host, "port": port})
    options = (deployment or DeploymentConfig()).options()
    app = Scorer.options(user_config=cfg.model_dump(), **options).bind()  # type: ignore[attr-defined]
    serve.run(app, name=app_name, route_prefix="/")
    return f"http://{host}:{port}"


def shutdown() -> None:
    """Stop Serve (its controller, proxies and replicas)."""
    from ray import serve

    serve.shutdown()
