"""Deploying the scorer on Ray Serve, and swapping its model version live."""

from __future__ import annotations

from scorer.config import DeploymentConfig, ScorerConfig

APP_NAME = "scorer"


class DeployError(RuntimeError):
    """Serve could not start replicas of the new configuration (the old ones keep serving)."""


def deploy(
    cfg: ScorerConfig,
    deployment: DeploymentConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_name: str = APP_NAME,
) -> str:
    """Run (or update in place) the scorer application; return its HTTP base URL.

    Ray must be initialised. Re-deploying with another ``cfg`` (a new model version) is a
    rolling update: new replicas load the model before old ones drain, so no request is
    dropped. A checkpoint that fails verification (content hash) is refused with
    ``DeployError`` before the running app is touched. A declarative update of only
    ``user_config`` (a RayService's serveConfigV2) reconfigures running replicas in place.
    Without a key ring (``cfg.has_keys``) anyone who reaches the port may score and read
    images: that is allowed on a loopback ``host`` only.
    """
    import ipaddress

    from ray import serve

    from scorer.app import Scorer
    from vlae.checkpoint import CheckpointError, resolve_checkpoint, verify_checkpoint

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not cfg.has_keys:
        raise DeployError(
            f"refusing to serve on {host} without API keys: set VLAEWATCH_API_KEYS (an "
            "'ingest' key for the lines, a 'service' key for the API) or "
            "VLAEWATCH_API_KEYS_FILE"
        )
    # Verify before touching the running app: Serve marks an app whose update failed as
    # unavailable, so a bad checkpoint must never reach the replicas.
    try:
        verify_checkpoint(resolve_checkpoint(cfg.checkpoint, cfg.model_version))
        for ref in cfg.line_models.values():
            verify_checkpoint(resolve_checkpoint(ref, None))
    except CheckpointError as exc:
        raise DeployError(f"model refused, the running version keeps serving: {exc}") from exc
    serve.start(http_options={"host": host, "port": port})
    options = (deployment or DeploymentConfig()).options()
    app = Scorer.options(user_config=cfg.model_dump(), **options).bind()  # type: ignore[attr-defined]
    try:
        serve.run(app, name=app_name, route_prefix="/")
    except RuntimeError as exc:
        raise DeployError(
            f"{exc} (see the replica error above, e.g. a checkpoint content hash mismatch); "
            "replicas of the previous configuration keep serving"
        ) from exc
    return f"http://{host}:{port}"


def shutdown() -> None:
    """Stop Serve (its controller, proxies and replicas)."""
    from ray import serve

    serve.shutdown()
