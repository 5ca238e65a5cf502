"""The on-disk embedding store the server and the trainer subprocess share: hits, bound, torn files, and the
slices a save has the server encode ahead for the next run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from samlabel.config import load_app_config, load_model_config
from samlabel.datastore.local import SafeLocalDatastore
from samlabel.inference.embedding_store import EmbeddingStore
from samlabel.inference.engine import SamEngine
from samlabel.inference.preprocess import normalize_volume
from samlabel.tools.sample_data import make_ct_phantom
from samlabel.training.anchor import load_anchor_set
from samlabel.training.encode_ahead import EncodeAhead
from samlabel.training.loop import validate, validation_targets
from samlabel.training.samples import slice_samples
from samlabel.training.task import load_pair


def test_a_stored_embedding_comes_back_only_under_its_own_key(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, 2**30)
    embedding = torch.randn(1, 256, 64, 64)
    store.put("a", embedding)
    assert torch.equal(store.get("a"), embedding)
    assert store.get("b") is None
    (path,) = tmp_path.glob("*.npz")
    path.rename(store._path("b"))  # a file under another key's name (a hash collision) is not that key's
    assert store.get("b") is None


def test_a_torn_file_is_a_miss_and_is_removed(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, 2**30)
    store.put("a", torch.randn(1, 8, 4, 4))
    path = store._path("a")
    path.write_bytes(path.read_bytes()[:100])
    assert store.get("a") is None and not path.exists()
    EmbeddingStore(tmp_path, 0).put("c", torch.randn(1, 8, 4, 4))  # 0 bytes: off
    assert not store._path("c").exists()


def test_the_store_keeps_within_its_bound_dropping_the_least_recently_used(tmp_path: Path) -> None:
    one = torch.randn(1, 256, 16, 16)
    size = 256 * 16 * 16 * 4
    store = EmbeddingStore(tmp_path, int(2.5 * size))
    for age, key in enumerate(["old", "used", "new"]):
        store.put(key, one)
        os.utime(store._path(key), (1000 + age, 1000 + age))
    assert store.get("old") is None, "three did not fit: the oldest went"
    os.utime(store._path("used"), (2000, 2000))  # read recently, as get() marks it
    store.put("newest", one)
    assert store.get("used") is not None and store.get("new") is None
    assert sum(p.stat().st_size for p in tmp_path.glob("*.npz")) <= 2.5 * size


def test_a_trainer_subprocess_finds_the_servers_embeddings_and_exports_nothing(tmp_path: Path) -> None:
    """The server encodes a slice with its default runtime (OpenVINO); a trainer engine in another process
    (PyTorch decoder, the server's encoder runtime) gets that very embedding from disk and reads the server's
    encoder graph."""
    cfg = load_app_config({})
    server = SamEngine(load_model_config(cfg.model), cfg, encoder_dir=tmp_path)
    assert server.encoder_runtime == "openvino" and server._graph_encoder[1].exported
    volume01 = normalize_volume(np.asarray(make_ct_phantom(0)[0].dataobj))
    np.save(tmp_path / "volume.npy", volume01)
    torch.save(server.embed(volume01, 20), tmp_path / "served.pt")
    trainer = textwrap.dedent(f"""
        import numpy as np, torch
        from pathlib import Path
        from samlabel.config import load_app_config, load_model_config
        from samlabel.inference.engine import SamEngine
        folder = Path({str(tmp_path)!r})
        cfg = load_app_config({{}})
        engine = SamEngine(load_model_config(cfg.model), cfg, runtime="torch", encoder_dir=folder,
                           encoder_runtime="openvino")
        embedding = engine.embed(np.load(folder / "volume.npy"), 20)
        same = torch.equal(embedding, torch.load(folder / "served.pt"))
        print(engine.encoder_runs, engine._graph_encoder[1].exported, engine._onnx_decoder is None, same)
    """)
    out = subprocess.run([sys.executable, "-c", trainer], capture_output=True, text=True, check=True).stdout
    assert out.split()[-4:] == ["0", "False", "True", "True"]


def test_a_saved_labels_slices_are_encoded_ahead_so_the_run_encodes_nothing(tmp_path: Path) -> None:
    """At save time the server encodes, behind clicks, what the next run will read: the label's training
    slices, each object's validation slice and the anchor set. A trainer engine then encodes none of them."""
    studies = tmp_path / "studies"
    studies.mkdir()
    image, label = make_ct_phantom(0)
    small = np.zeros(label.shape, dtype=np.uint8)
    small[..., 18:23] = np.asarray(label.dataobj)[..., 18:23] == 1  # one organ on 5 slices
    nib.save(image, studies / "ct.nii.gz")
    nib.save(nib.Nifti1Image(small, image.affine), tmp_path / "label.nii.gz")
    datastore = SafeLocalDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    label_id = datastore.save_label("ct", str(tmp_path / "label.nii.gz"), "final", {})
    cfg = load_app_config({"train.anchor_slices": "1", "prefetch_slices": "0"})
    server = SamEngine(load_model_config(cfg.model), cfg, encoder_dir=tmp_path / "encoder")
    EncodeAhead(server, cfg, datastore).label_saved("ct", label_id)
    deadline = time.monotonic() + 120
    while server.encoder_runs < 3 + 2 or not server.prefetcher.wait_idle(timeout=1):  # label, then anchor
        assert time.monotonic() < deadline, server.prefetcher.status()
    trainer = SamEngine(
        load_model_config(cfg.model),
        cfg,
        runtime="torch",
        encoder_dir=tmp_path / "encoder",
        encoder_runtime=server.encoder_runtime,
    )
    name, volume01, saved = load_pair(
        {"image": str(studies / "ct.nii.gz"), "label": datastore.get_label_uri(label_id, "final")}, cfg
    )
    samples = slice_samples(trainer, [(name, volume01, saved)], int(cfg.train["slice_step"]))
    assert sorted({s.k for s in samples}) == [18, 20, 22]
    held_out = validation_targets(name, volume01, saved, cfg.min_object_voxels)
    validate(trainer, held_out, clicks=1)
    anchor = load_anchor_set(1)
    slice_samples(trainer, anchor.replay, 1)
    validate(trainer, anchor.validate, clicks=1)
    assert trainer.encoder_runs == 0
