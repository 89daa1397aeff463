"""``/v1/thresholds``: current values, history, calibration (with dry runs), rollback."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query

from api.calibrate import (
    CalibrationError,
    FalseAlarmRate,
    best_f1,
    conformal_threshold,
    false_alarm_rate,
    sigma_threshold,
    target_precision,
    what_if,
)
from api.deps import Operator, ServicesDep, Viewer
from api.errors import NotFound, Unprocessable
from api.schemas import ErrorBody
from api.schemas.thresholds import (
    CalibrateRequest,
    CalibrationResult,
    FalseAlarmRateOut,
    FprParams,
    LabelQuality,
    LabelsParams,
    LineImpact,
    ManualParams,
    RollbackRequest,
    SigmaParams,
    Target,
    Threshold,
    ThresholdHistory,
    ThresholdList,
)
from api.served_models import ServedModel
from api.thresholds import effective
from contract.auth import Principal
from contract.keys import DEFAULT_LINE, LINE_PATTERN

router = APIRouter(prefix="/v1/thresholds", tags=["thresholds"])
LinePath = Annotated[str, Path(pattern=LINE_PATTERN, examples=["cam1"])]
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody} for s in (401, 403, 404, 422, 503)
}
TargetQuery = Annotated[
    Target, Query(description="image: alert thresholds on the score; pixel: region thresholds "
                              "on the anomaly map")
]  # fmt: skip


@router.get("", response_model=ThresholdList, responses=ERRORS)
async def list_thresholds(
    services: ServicesDep, _: Viewer, target: TargetQuery = "image"
) -> ThresholdList:
    """Every line's current threshold; lines without one use ``default``."""
    current = await services.threshold_store(target).current()
    default = current.pop(DEFAULT_LINE, None)
    return ThresholdList(default=default, lines=current)


@router.get("/{line}", response_model=Threshold, responses=ERRORS)
async def get_threshold(
    line: LinePath, services: ServicesDep, _: Viewer, target: TargetQuery = "image"
) -> Threshold:
    """The threshold that applies to ``line`` now: its own, else the default (see ``line``)."""
    found = effective(await services.threshold_store(target).current(), line)
    if found is None:
        raise NotFound(f"no {target} threshold applies to line {line!r}: calibrate one")
    return found


@router.get("/{line}/history", response_model=ThresholdHistory, responses=ERRORS)
async def threshold_history(
    line: LinePath,
    services: ServicesDep,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    target: TargetQuery = "image",
) -> ThresholdHistory:
    """Every version of the line's own threshold, newest first: who, when, how, why."""
    versions = await services.threshold_store(target).history(line, limit)
    return ThresholdHistory(line=line, versions=versions)


@router.post("/{line}/rollback", response_model=Threshold, responses=ERRORS)
async def rollback(
    line: LinePath, body: RollbackRequest, services: ServicesDep, who: Operator
) -> Threshold:
    """Make an earlier version current again (recorded as a new version)."""
    store = services.threshold_store(body.target)
    restored = await store.rollback(line, body.to_version, who.name, body.why)
    services.metrics.calibrations.labels("rollback", "true").inc()
    services.metrics.threshold_gauge(body.target).labels(line).set(restored.value)
    await services.annotator.note(
        f"{_name(body.target)} {line} rolled back to version {body.to_version or 'previous'}: "
        f"{restored.value:.4g} by {who.name}. {body.why}", ["threshold", line],
    )  # fmt: skip
    return restored


def _name(target: Target) -> str:
    return "threshold" if target == "image" else "pixel threshold"


@router.post("/calibrate", response_model=CalibrationResult, responses=ERRORS)
async def calibrate(
    body: CalibrateRequest, services: ServicesDep, who: Operator
) -> CalibrationResult:
    """Choose a threshold from data and show what it implies: the expected false-alarm rate on
    normal images (with an interval) and the alerts it would have raised per line over the
    recent window. ``dry_run`` changes nothing."""
    params = body.params
    model, cal = await _calibration_scores(services, body)
    value, confidence, quality = await _choose(services, body, cal)
    far: FalseAlarmRate | None = false_alarm_rate(cal, value, confidence) if len(cal) else None
    far_out = FalseAlarmRateOut(**far.__dict__) if far is not None else None
    window_s = body.window_s or services.cfg.window_s
    # The what-if replays recent scores; the score stream carries no map maxima to replay.
    impact = [] if body.target == "pixel" else await _impact(services, body.line, value, window_s)
    version = None
    if not body.dry_run:
        version = await _apply(services, body, who, value, model, far_out)
    services.metrics.calibrations.labels(params.method, str(not body.dry_run).lower()).inc()
    return CalibrationResult(
        line=body.line, target=body.target, threshold=value, applied=not body.dry_run,
        version=version,
        model_version=model.version if model else None, false_alarm_rate=far_out,
        window_s=window_s, impact=impact, label_quality=quality,
    )  # fmt: skip


async def _calibration_scores(
    services: ServicesDep, body: CalibrateRequest
) -> tuple[ServedModel | None, np.ndarray]:
    """The model to calibrate on (without a version: the one that scores the line now, as the
    scorer announced it) and its normal calibration scores, or map maxima for a pixel
    threshold; methods other than manual and labels need them."""
    params = body.params
    model = await (services.models.get(body.model_version) if body.model_version
                   else services.models.for_line(body.line))  # fmt: skip
    if model is None and not isinstance(params, ManualParams | LabelsParams):
        which = body.model_version or "any model"
        raise Unprocessable(
            f"no calibration scores for {which}: the scorer publishes them when it loads a "
            "model; start it, or use method 'manual' or 'labels'"
        )
    pixel = body.target == "pixel"
    cal = np.array([])
    if model is not None:
        cal = model.map_calibration if pixel else model.calibration
        if pixel and not len(cal) and not isinstance(params, ManualParams | LabelsParams):
            raise Unprocessable(
                f"model {model.version} has no calibration map maxima (its checkpoint was "
                "written before pixel thresholds): retrain it, or use method 'manual'"
            )
    return model, cal


async def _choose(
    services: ServicesDep, body: CalibrateRequest, cal: np.ndarray
) -> tuple[float, float, LabelQuality | None]:
    """The method's threshold, the confidence of its false-alarm interval, and for labels how
    well the threshold separates them."""
    params = body.params
    if isinstance(params, FprParams):
        return conformal_threshold(cal, params.alpha), params.confidence, None
    if isinstance(params, SigmaParams):
        return sigma_threshold(cal, params.k), 0.95, None
    if isinstance(params, ManualParams):
        return params.threshold, 0.95, None
    value, quality = await _from_labels(services, params, body.line, body.target == "pixel")
    return value, 0.95, quality


async def _apply(
    services: ServicesDep, body: CalibrateRequest, who: Principal, value: float,
    model: ServedModel | None, far: FalseAlarmRateOut | None,
) -> int:  # fmt: skip
    """Store ``value`` as the line's new threshold version, and show it on the gauge and the
    dashboards; the new version."""
    params = body.params
    stored = await services.threshold_store(body.target).set(
        body.line, value, params.method, params.model_dump(exclude={"method"}), who.name,
        body.why, model.version if model else None, far,
    )  # fmt: skip
    assert stored is not None
    services.metrics.threshold_gauge(body.target).labels(body.line).set(value)
    await services.annotator.note(
        f"{_name(body.target)} {body.line} = {value:.4g} ({params.method}, v{stored.version}) "
        f"by {who.name}. {body.why}", ["threshold", body.line],
    )  # fmt: skip
    return stored.version


async def _from_labels(
    services: ServicesDep, params: LabelsParams, line: str, pixel: bool
) -> tuple[float, LabelQuality]:
    """The best cut on what operators labelled: alert scores against their labels, or, for a
    pixel threshold, marked regions' peaks against their verdicts (right: a defect). Only
    regions that were found can be marked, so region labels can raise a pixel threshold (drop
    false regions) but never lower it below the one that found them."""
    labelled = [
        (lb.line, lb.peak, lb.verdict == "right") for lb in await services.alerts.region_labels()
    ] if pixel else [
        (lb.line, lb.score, lb.label == "anomaly") for lb in await services.alerts.labels()
    ]  # fmt: skip
    if not params.all_lines:
        labelled = [x for x in labelled if x[0] == line]
    scores = np.array([x[1] for x in labelled], dtype=np.float64)
    is_anomaly = np.array([x[2] for x in labelled], dtype=np.bool_)
    if params.objective == "precision":
        if params.target_precision is None:
            raise CalibrationError("objective 'precision' needs target_precision")
        fit = target_precision(scores, is_anomaly, params.target_precision)
    else:
        fit = best_f1(scores, is_anomaly)
    quality = LabelQuality(precision=fit.precision, recall=fit.recall, f1=fit.f1,
                           n_anomaly=fit.n_anomaly, n_normal=fit.n_normal)  # fmt: skip
    return fit.threshold, quality


async def _impact(
    services: ServicesDep, line: str, value: float, window_s: float
) -> list[LineImpact]:
    """Alerts per affected line over the window, now and with the new value: a line's own
    threshold affects that line; the default affects every line without one."""
    window = await services.window.read(window_s)
    current = await services.thresholds.current()
    lines = sorted(set(window["line"])) if not window.empty else []
    if line == DEFAULT_LINE:
        affected = [ln for ln in lines if ln not in current or ln == DEFAULT_LINE]
    else:
        affected = [line] if line in lines else []
    now = {ln: t.value for ln in affected if (t := effective(current, ln)) is not None}
    before = what_if(window, now).set_index("line")
    after = what_if(window, dict.fromkeys(affected, value)).set_index("line")
    out = []
    for ln in affected:
        items = int(after.loc[ln, "items"]) if ln in after.index else 0
        alerts_now = int(before.loc[ln, "alerts"]) if ln in before.index else 0
        alerts_new = int(after.loc[ln, "alerts"]) if ln in after.index else 0
        out.append(
            LineImpact(
                line=ln, items=items, alerts_now=alerts_now, alerts_new=alerts_new,
                rate_now=alerts_now / items if items else 0.0,
                rate_new=alerts_new / items if items else 0.0,
            )
        )  # fmt: skip
    return out
