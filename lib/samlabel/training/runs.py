"""Start fine-tuning runs one at a time, whoever asks (a user's POST or the saved-label trigger).

MONAI Label registers a run's process only once its worker thread has started it, so two train
requests close together both pass its "already running" check and queue two runs. Here every start
takes one lock and checks the task list, which holds a run from the moment it is submitted.
"""

from __future__ import annotations

import threading

from monailabel.utils.async_tasks.task import AsyncTask
from monailabel.utils.async_tasks.utils import tasks

ACTIVE = ("SUBMITTED", "RUNNING")
_start_lock = threading.Lock()


def active_run() -> dict | None:
    return next((task for task in tasks("train") if task["status"] in ACTIVE), None)


def training_running() -> bool:
    return active_run() is not None


def start_training(request: dict, params: dict | None = None) -> tuple[dict | None, str]:
    """``(task, "")`` for a started run, or ``(None, why)`` when one is already submitted or running."""
    with _start_lock:
        running = active_run()
        if running is not None:
            return None, f"fine-tuning run {running['id']} is already {running['status'].lower()}"
        task, detail = AsyncTask.run("train", request=request, params=params)
        return task, detail or ""
