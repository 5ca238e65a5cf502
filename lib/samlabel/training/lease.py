"""One fine-tuning run at a time across server replicas that share a model folder.

A lease file in the trainer folder names the run's holder (host, pid, token). It is renewed every few seconds
while the run goes, by the replica that started it and by the run's own process; whichever is killed,
the other keeps it, and when both are gone the renewals stop and the lease lapses after ``ttl`` seconds,
so a killed holder never blocks training for good. Taking, lapsing and releasing happen under an
``flock`` on a lock file beside it, which the kernel drops with its holder (NFS clients map it onto their
locks), so two replicas asking at once never both get the lease.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from samlabel.atomic_write import locked, write_json

LEASE_FILE = "training.lease"  # in the trainer's folder
LEASE_TTL_SECONDS = 30.0
RENEW_SECONDS = 5.0


class TrainingLease:
    def __init__(self, path: Path, ttl: float = LEASE_TTL_SECONDS):
        self.path = Path(path)
        self.ttl = ttl

    def holder(self) -> dict | None:
        """The live lease's holder, or None when there is none (or it lapsed)."""
        try:
            age = time.time() - self.path.stat().st_mtime
            holder = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return holder if age <= self.ttl else None

    def acquire(self, run: str) -> tuple[str | None, dict | None]:
        """``(token, None)`` when the lease is now ours for ``run``, else ``(None, the live holder)``."""
        with locked(self.path):
            held = self.holder()
            if held is not None:
                return None, held
            token = uuid.uuid4().hex
            write_json(self.path, {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "run": run})
            return token, None

    def renew(self, token: str) -> bool:
        """Keep the lease alive; False once it is no longer ``token``'s (released, or lapsed and taken)."""
        with locked(self.path):
            held = self.holder()
            if held is None or held.get("token") != token:
                return False
            os.utime(self.path)
            return True

    def release(self, token: str) -> None:
        with locked(self.path):
            held = self.holder()
            if held is not None and held.get("token") == token:
                self.path.unlink(missing_ok=True)

    def keep_alive(self, token: str, while_true: Callable[[], bool], every: float = RENEW_SECONDS) -> threading.Thread:
        """Renew every ``every`` seconds in a daemon thread while ``while_true()`` (checked every half second);
        release as soon as it is not (the holder's run has ended: the next run need not wait for a renewal)."""

        def loop() -> None:
            renewed = 0.0
            try:
                while while_true():
                    if time.monotonic() - renewed >= every:
                        if not self.renew(token):
                            return
                        renewed = time.monotonic()
                    time.sleep(0.5)
            finally:
                self.release(token)

        thread = threading.Thread(target=loop, name="samlabel-training-lease", daemon=True)
        thread.start()
        return thread
