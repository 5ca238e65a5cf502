"""At save time, encode what the next fine-tuning run will read, so the run does not compute it between the
save and the new version.

A run that trains no encoder adapters takes every embedding from the server's store on disk (see
:mod:`samlabel.inference.embedding_store`) and encodes only what is missing there. When a final label is
saved, one thread reads the image and label as the run will (:func:`~samlabel.training.task.load_pair`)
and hands the prefetcher's backlog the slices a run takes from it: the training slices and each object's
largest slice (the validation slice: the run picks its held-out images later). The first save also queues
the anchor set's slices. The backlog runs behind annotators' clicks and their neighbours.
"""

from __future__ import annotations

import logging
import queue
import threading

from monailabel.interfaces.datastore import Datastore

from samlabel.config import AppConfig
from samlabel.evaluation.metrics import largest_slice
from samlabel.inference.engine import SamEngine
from samlabel.training.anchor import load_anchor_set
from samlabel.training.loop import validation_targets
from samlabel.training.samples import training_slices
from samlabel.training.task import load_pair

logger = logging.getLogger(__name__)


class EncodeAhead:
    def __init__(self, engine: SamEngine, cfg: AppConfig, datastore: Datastore):
        self.engine = engine
        self.cfg = cfg
        self.datastore = datastore
        self._saved: queue.Queue[tuple[str, str]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._anchor_queued = False
        self._reading = 0  # labels taken from the queue and not yet handed to the prefetcher

    def label_saved(self, image_id: str, label_id: str) -> None:
        """Queue a saved final label's slices; the files are read by the thread, not in the save's request.
        Nothing when the server keeps no embeddings on disk, or starts no runs of its own (``train_every``
        0: a run on request encodes what it needs itself)."""
        if self.engine.embeddings.disk is None or self.cfg.train_every <= 0:
            return
        self._saved.put((image_id, label_id))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sam-encode-ahead", daemon=True)
            self._thread.start()

    def status(self) -> dict[str, int]:
        """Saved labels not yet read (their slices then wait in the prefetcher's backlog)."""
        return {"labels_pending": self._saved.qsize() + self._reading}

    def _run(self) -> None:
        while True:
            image_id, label_id = self._saved.get()
            self._reading = 1
            try:
                self._queue_slices(image_id, label_id)
            except Exception:  # noqa: BLE001 - only costs the run the time to encode them itself
                logger.exception("encoding ahead for the label of %s failed", image_id)
            finally:
                self._reading = 0

    def _queue_slices(self, image_id: str, label_id: str) -> None:
        train = self.cfg.train
        image, label_file = self.datastore.get_image_uri(image_id), self.datastore.get_label_uri(label_id, "final")
        name, volume01, label = load_pair({"image": image, "label": label_file}, self.cfg)
        held_out = validation_targets(name, volume01, label, self.cfg.min_object_voxels)
        ks = set(training_slices(label, int(train["slice_step"]))) | {largest_slice(t.truth) for t in held_out}
        self.engine.prefetcher.backlog(volume01, sorted(ks))
        if not self._anchor_queued:
            self._anchor_queued = True
            anchor = load_anchor_set(int(train["anchor_slices"]))
            for one_slice in [v for _, v, _ in anchor.replay] + [t.volume01 for t in anchor.validate]:
                self.engine.prefetcher.backlog(one_slice, [0])
