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
    - ``spike``: a loss above ``spike_factor`` x the median of the (up to
      ``window``) previous losses while at peak — even one earlier loss is
      enough: a healthy run never doubles its loss from one step to the next.
    - ``rising``: over the last ``window`` losses at peak, the least-squares slope
      is positive, at least 70 % of the steps went up, and the loss rose by more
      than ``rise_fraction`` of its level.
    """

    window: int = 5
    spike_factor: float = 2.0
    rise_fraction: float = 0.05
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
            prev = [v for _, v, _ in self.history[:-1] if math.isfinite(v)][-self.window:]
            if prev and not self._fired("spike"):
                med = sorted(prev)[len(prev) // 2]
                if med > 0 and loss > self.spike_factor * med:
                    new.append({"kind": "spike", "step": step,
                                "message": f"loss spiked to {loss:.4g} at step {step} "
                                           f"(recent median {med:.4g}) while the LR is at its peak"})
            peak = [v for _, v, p in self.history if p and math.isfinite(v)][-self.window:]
            if len(peak) >= self.window and not self._fired("rising"):
                n = len(peak)
                xm, ym = (n - 1) / 2, sum(peak) / n
                slope = sum((i - xm) * (y - ym) for i, y in enumerate(peak)) / sum(
                    (i - xm) ** 2 for i in range(n))
                ups = sum(b > a for a, b in zip(peak, peak[1:])) / (n - 1)
                # steady: mostly increasing steps (a single jump is a spike, not a trend)
                if slope > 0 and ups >= 0.7 and (peak[-1] - peak[0]) > self.rise_fraction * abs(peak[0]):
                    new.append({"kind": "rising", "step": step,
                                "message": f"loss rose steadily over the last {n} logged steps at peak LR "
                                           f"({peak[0]:.4g} -> {peak[-1]:.4g})"})
        self.alerts.extend(new)
        return new


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
