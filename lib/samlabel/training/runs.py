"""Start fine-tuning runs one at a time, whoever asks (a user's POST or the saved-label trigger), on whichever
replica.

MONAI Label registers a run's process only once its worker thread has started it, so two train
requests close together both pass its "already running" check and queue two runs. Here every start
takes one lock and checks the task list, which holds a run from the moment it is submitted; across
replicas sharing the model folder, a start also takes the :class:`~samlabel.training.lease.TrainingLease`,
held until the run ends (its token travels in the request, so the run's own process renews it too).
"""

from __future__ import annotations

import threading

from monailabel.utils.async_tasks.task import AsyncTask
from monailabel.utils.async_tasks.utils import tasks

from samlabel.training.lease import TrainingLease

ACTIVE = ("SUBMITTED", "RUNNING")


def active_run() -> dict | None:
    """This replica's submitted or running run."""
    return next((task for task in tasks("train") if task["status"] in ACTIVE), None)


class TrainingRuns:
    def __init__(self, lease: TrainingLease):
        self.lease = lease
        self._start_lock = threading.Lock()

    def running(self) -> bool:
        """Whether a run is going here or on another replica."""
        return active_run() is not None or self.lease.holder() is not None

    def start(self, request: dict, params: dict | None = None) -> tuple[dict | None, str]:
        """``(task, "")`` for a started run, or ``(None, why)`` when one is already submitted or running."""
        with self._start_lock:
            running = active_run()
            if running is not None:
                return None, f"fine-tuning run {running['id']} is already {running['status'].lower()}"
            token, holder = self.lease.acquire(str(request.get("name", "")))
            if token is None:
                return None, f"a fine-tuning run holds the training lease ({holder['host']}, pid {holder['pid']})"
            try:
                task, detail = AsyncTask.run("train", request=request, params={**(params or {}), "lease": token})
            except BaseException:
                self.lease.release(token)
                raise
            if task is None:
                self.lease.release(token)
                return None, detail or "the run could not be started"
            self.lease.keep_alive(token, lambda: _still_active(task["id"]))
            return task, detail or ""


def _still_active(task_id: str) -> bool:
    """Whether this replica's task ``task_id`` is submitted or running."""
    return any(t["id"] == task_id and t["status"] in ACTIVE for t in tasks("train"))
