"""Data-parallel training, MONAI Label's multi-GPU option: two gloo ranks on this CPU train the weights one
process trains, and rank 0 alone validates, gates and publishes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import torch

from samlabel.adapters.choice import start_record
from samlabel.adapters.versions import AdapterVersions
from samlabel.config import load_app_config, load_model_config
from samlabel.datastore.local import SafeLocalDatastore
from samlabel.tools.sample_data import make_ct_phantom
from samlabel.training import task as task_module
from samlabel.training.task import SamAdapterTrain, TrainingEngines

# 4 steps of 4 samples drawn from the 5 objects of 2 slices of one phantom, validated on one object, no anchor set
SHORT_RUN = {
    "max_steps": 4,
    "train_batch_size": 4,
    "learning_rate": 1e-4,
    "val_every": 100,
    "val_split": 0.0,
    "val_max_targets": 1,
    "slice_step": 16,
    "anchor_slices": 0,
}


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


def flat(path: Path) -> torch.Tensor:
    """The weights :class:`KeepsWeights` saved, as one vector."""
    state = torch.load(path)
    return torch.cat([state[k].flatten().double() for k in sorted(state)])


class KeepsWeights(SamAdapterTrain):
    """The trainer, also writing the trainable weights at fp32 (adapter files hold fp16): each rank's as it
    starts, rank 0's as it publishes. At module level, so that torch.multiprocessing.spawn can send it."""

    def network(self, context):
        self.model = super().network(context)
        torch.save(trainable(self.model), Path(self._model_dir) / f"start_rank{context.local_rank}.pt")
        return self.model

    def _publish(self, *args, **kwargs):
        torch.save(trainable(self.model), Path(self._model_dir) / "trained.pt")
        return super()._publish(*args, **kwargs)


def test_two_gloo_ranks_train_what_one_process_trains_and_only_rank_0_publishes(tmp_path, monkeypatch) -> None:
    cfg = load_app_config({"device": "cpu"})  # gloo ranks, on a machine with GPUs too
    model_cfg = load_model_config(cfg.model)
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    image, label = make_ct_phantom(0)
    nib.save(image, studies / "ct_000.nii.gz")
    nib.save(label, studies / "labels" / "final" / "ct_000.nii.gz")
    store = SafeLocalDatastore(str(studies), extensions=("*.nii.gz",), label_values=set(cfg.label_values.values()))

    engines = TrainingEngines(model_cfg, cfg, tmp_path / "encoder")  # the second run reads the first's embeddings

    def train(name: str, **ranks) -> tuple[dict, AdapterVersions]:
        (tmp_path / name).mkdir()
        versions = AdapterVersions(tmp_path / name, start_record(cfg.adapter, model_cfg.adapter))
        task = KeepsWeights(str(tmp_path / name), cfg, versions, engines)
        return task({**SHORT_RUN, "name": name, **ranks}, store), versions

    # the one-process run trains in pytest's process: at its priority, on the share of the cores a rank gets
    monkeypatch.setattr(task_module, "TRAINING_NICENESS", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))
    try:
        one, _ = train("one", multi_gpu=False)
    finally:
        torch.set_num_threads(threads)
    two, versions = train("two", multi_gpu=True, gpus="0,1")  # no CUDA here: 2 gloo ranks

    start = flat(tmp_path / "one" / "start_rank0.pt")
    for rank in (0, 1):
        assert torch.equal(flat(tmp_path / "two" / f"start_rank{rank}.pt"), start), f"rank {rank} starts elsewhere"
    change = flat(tmp_path / "one" / "trained.pt") - start
    apart = flat(tmp_path / "two" / "trained.pt") - start - change
    # AdamW's first steps move a weight by about the learning rate whatever its gradient's size, so the few of
    # millions whose gradient is near 0 take the float noise of summing in another order up to that size:
    # the runs agree as a whole (to about 1e-4 of the change here), not each weight to 1e-4 of it
    assert change.norm() > 0.01, "the run trains"
    assert apart.norm() < 0.01 * change.norm(), f"the ranks' weights are {apart.norm() / change.norm():.3g} apart"

    assert two["version"] == one["version"] == "ft001" and two["before"] == one["before"]
    assert [r.version for r in versions.records()][1:] == ["ft001"], "one version, recorded by rank 0 alone"
