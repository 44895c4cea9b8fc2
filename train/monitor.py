"""Watch the loss while the LR is at its peak: the moment a too-high LR shows.

After warm-up the LR sits at (or near) its peak; if the loss then climbs
steadily, jumps far above its recent level, or turns NaN/inf, the peak LR is
the likely culprit. The monitor warns on the console, sets the MLflow tag
``bakeoff.lr_warning`` and logs the metric ``lr_monitor_alert`` (1 at the step
it fired, kinds encoded in the tag), once per kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from bakeoff.console import warn


@dataclass
class LossMonitor:
    """Pure logic (no Trainer): feed (step, loss, in_peak) and read ``alerts``.

    - ``nan``: a non-finite loss at any step.
    - ``spike``: a loss at peak above ``spike_factor`` x the *highest* of the
      (up to ``4 * window``) losses before it.
    - ``rising``: over the last ``window`` losses at peak, at least 70 % of the
      steps went up, the loss rose by more than ``rise_fraction`` of its level,
      and the least-squares slope is positive by at least ``min_t`` standard
      errors (the points lie near a rising line).
    - ``stalled``: after ``3 * window`` losses at peak, the median of the last
      ``2 * window`` is not below the median of the first ``window`` losses of
      the run: the loss has not fallen at all at the peak LR.

    Why these shapes: with small batches (one packed sequence per step) the
    logged loss of a healthy run jumps between ~0.1 and ~2.5 from step to step
    on real data (easy and hard sequences), so "doubled since the recent
    median" and "went up 3 steps in 4" happen by chance: the demo's good SFT
    runs fired both under those rules. Against the highest recent loss and
    with a slope that must stand out of its own residuals, they fire on a jump
    or a trend and not on that noise; on a smooth loss curve they are the
    plain rules. ``stalled`` is what tells a run whose peak LR is too high (the
    demo's LR x10 control: its loss stays above where it started) from a noisy
    run that learns; medians, because the losses are bimodal.
    """

    window: int = 5
    spike_factor: float = 2.0
    rise_fraction: float = 0.05
    min_t: float = 10.0
    history: list[tuple[int, float, bool]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def _fired(self, kind: str) -> bool:
        return any(a["kind"] == kind for a in self.alerts)

    def update(self, step: int, loss: float, in_peak: bool) -> list[dict[str, Any]]:
        new: list[dict[str, Any]] = []
        self.history.append((step, loss, in_peak))
        if not math.isfinite(loss):
            if not self._fired("nan"):
                new.append({"kind": "nan", "step": step,
                            "message": f"loss is {loss} at step {step}: the peak LR is probably too high"})
        elif in_peak:
            finite = [v for _, v, _ in self.history if math.isfinite(v)]
            before = finite[:-1][-4 * self.window:]
            if before and not self._fired("spike"):
                top = max(before)
                if top > 0 and loss > self.spike_factor * top:
                    new.append({"kind": "spike", "step": step,
                                "message": f"loss spiked to {loss:.4g} at step {step} (highest of the last "
                                           f"{len(before)} logged: {top:.4g}) while the LR is at its peak"})
            at_peak = [v for _, v, p in self.history if p and math.isfinite(v)]
            peak = at_peak[-self.window:]
            if len(peak) >= self.window and not self._fired("rising"):
                n = len(peak)
                ups = sum(b > a for a, b in zip(peak, peak[1:])) / (n - 1)
                # steady: mostly increasing steps (a single jump is a spike, not a trend)
                if ups >= 0.7 and (peak[-1] - peak[0]) > self.rise_fraction * abs(peak[0]) \
                        and _slope_t(peak) >= self.min_t:
                    new.append({"kind": "rising", "step": step,
                                "message": f"loss rose steadily over the last {n} logged steps at peak LR "
                                           f"({peak[0]:.4g} -> {peak[-1]:.4g})"})
            if len(at_peak) >= 3 * self.window and not self._fired("stalled"):
                first, last = finite[:self.window], at_peak[-2 * self.window:]
                if _median(last) >= _median(first):
                    new.append({"kind": "stalled", "step": step,
                                "message": f"the loss has not fallen at the peak LR: median {_median(last):.4g} "
                                           f"over the last {len(last)} logged steps vs {_median(first):.4g} "
                                           f"over the first {len(first)}"})
        self.alerts.extend(new)
        return new


def _median(values: list[float]) -> float:
    v = sorted(values)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


def _slope_t(y: list[float]) -> float:
    """The least-squares slope of ``y`` against 0..n-1 in standard errors
    (inf when the points lie on a rising line)."""
    n = len(y)
    xm, ym = (n - 1) / 2, sum(y) / n
    sxx = sum((i - xm) ** 2 for i in range(n))
    slope = sum((i - xm) * (v - ym) for i, v in enumerate(y)) / sxx
    sse = sum((v - ym - slope * (i - xm)) ** 2 for i, v in enumerate(y))
    se = math.sqrt(sse / (n - 2) / sxx) if n > 2 else 0.0
    if se == 0.0:
        return math.inf if slope > 0 else -math.inf if slope < 0 else 0.0
    return slope / se


def make_monitor_callback(schedule: Callable[[int], float] | Any, peak_ratio: float = 0.8,
                          monitor: LossMonitor | None = None) -> Any:
    """A ``TrainerCallback`` feeding logged losses to a ``LossMonitor``.

    ``schedule``: a ``Schedule`` (see schedule.py); a step counts as "at peak"
    when past warm-up and its multiplier is >= ``peak_ratio``.
    """
    from transformers import TrainerCallback

    mon = monitor or LossMonitor()

    class LRMonitorCallback(TrainerCallback):
        monitor = mon

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not logs or "loss" not in logs:
                return control
            step = state.global_step
            # global_step counts steps done; the loss logged was made at step-1 (0-based)
            in_peak = schedule.at_peak(step - 1, peak_ratio) if hasattr(schedule, "at_peak") else True
            for alert in mon.update(step, float(logs["loss"]), in_peak):
                warn(f"LR monitor: {alert['message']}")
                if state.is_world_process_zero:
                    _record(alert)
            return control

    return LRMonitorCallback()


def _record(alert: dict[str, Any]) -> None:
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return
    client = mlflow.MlflowClient()
    prev = client.get_run(run.info.run_id).data.tags.get("bakeoff.lr_warning")
    kinds = ",".join(sorted(set(filter(None, (prev or "").split(","))) | {alert["kind"]}))
    mlflow.set_tag("bakeoff.lr_warning", kinds)
    mlflow.set_tag(f"bakeoff.lr_warning.{alert['kind']}", alert["message"][:5000])
    mlflow.log_metric("lr_monitor_alert", 1.0, step=alert["step"])
