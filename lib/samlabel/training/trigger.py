"""Saved labels start fine-tuning: every ``train_every`` saved final labels ask for one background run.

MONAI Label runs training in its own process, one run at a time. A request made while a run is going
is remembered as one flag (however many labels are saved meanwhile) and starts exactly one more run
when the current one ends; a single scheduler thread starts runs, so two never overlap. The count and
the flag live in a JSON file, read and written under a file lock each time, so a restarted server keeps
them and replicas sharing the model folder count toward one trigger (whichever replica's scheduler sees
the flag first starts the run; :mod:`samlabel.training.runs` keeps it to one across replicas).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from samlabel.atomic_write import locked, write_json

logger = logging.getLogger(__name__)


class TrainTrigger:
    """Counts saved final labels and starts background runs through ``start_run``.

    ``start_run()`` starts a run and returns True, or False when it cannot start now (another run is
    going); ``running()`` says whether any run is going, including one a user started by hand.
    """

    def __init__(
        self,
        state_file: Path,
        every: int,
        start_run: Callable[[], bool],
        running: Callable[[], bool],
        poll_seconds: float = 1.0,
    ):
        self.state_file = Path(state_file)
        self.every = every
        self.start_run = start_run
        self.running = running
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        """The shared state, for reading and changing: written back when the block ends without an error."""
        with locked(self.state_file):
            state = {"counted": {}, "since_last_run": 0, "pending": False, "runs_started": 0}
            with contextlib.suppress(FileNotFoundError):
                state.update(json.loads(self.state_file.read_text()))
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                write_json(self.state_file, state)

    def label_saved(self, image_id: str, saved_at: float) -> dict[str, Any]:
        """Count a final label, once per (image, save time); returns the counts for the save's answer."""
        with self._state() as state:
            if self.every > 0 and state["counted"].get(image_id) != saved_at:
                state["counted"][image_id] = saved_at
                state["since_last_run"] += 1
                if state["since_last_run"] >= self.every:
                    state["since_last_run"] = 0
                    state["pending"] = True
                    logger.info("%d labels saved: a fine-tuning run is requested", self.every)
            answer = self._answer(state)
        self._wake.set()
        return answer

    def status(self) -> dict[str, Any]:
        with self._state() as state:
            return self._answer(state)

    def _answer(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "train_every": self.every,
            "saved_since_last_run": state["since_last_run"],
            "run_requested": state["pending"],
            "runs_started": state["runs_started"],
        }

    def start(self) -> None:
        """Run the scheduler in a daemon thread for the life of the server."""
        threading.Thread(target=self._loop, name="samlabel-train-trigger", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            try:
                self._start_if_due()
            except Exception:  # the scheduler must outlive a failed start; the flag stays set
                logger.exception("could not start a fine-tuning run; will try again")

    def _start_if_due(self) -> None:
        if self.running():  # cheap, and outside the file lock: the other replicas count on
            return
        with self._state() as state:
            if not state["pending"] or self.running():
                return
            if self.start_run():
                state["pending"] = False  # a label saved from now on asks for the next run
                state["runs_started"] += 1
