"""The on-disk embedding store the server and the trainer subprocess share: hits, bound, torn files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from samlabel.config import load_app_config, load_model_config
from samlabel.inference.embedding_store import EmbeddingStore
from samlabel.inference.engine import SamEngine
from samlabel.inference.preprocess import normalize_volume
from samlabel.tools.sample_data import make_ct_phantom


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
    """The server encodes a slice with ONNX Runtime; a trainer engine in another process (PyTorch decoder,
    the server's encoder runtime) gets that very embedding from disk and reads the server's encoder graph."""
    cfg = load_app_config({})
    server = SamEngine(load_model_config(cfg.model), cfg, encoder_dir=tmp_path)
    assert server.encoder_runtime == "onnxruntime" and server._onnx_encoder[1].exported
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
                           encoder_runtime="onnxruntime")
        embedding = engine.embed(np.load(folder / "volume.npy"), 20)
        same = torch.equal(embedding, torch.load(folder / "served.pt"))
        print(engine.encoder_runs, engine._onnx_encoder[1].exported, engine._onnx_decoder is None, same)
    """)
    out = subprocess.run([sys.executable, "-c", trainer], capture_output=True, text=True, check=True).stdout
    assert out.split()[-4:] == ["0", "False", "True", "True"]
