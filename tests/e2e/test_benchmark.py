"""scripts/benchmark end to end (its --quick scope): the speed-ups it reports come from real cache hits.

Timings are not asserted (they live in results/benchmark/); what each request computed is: the server
reports the encoder runs a request made itself.
"""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_benchmark_through_a_real_server(tmp_path):
    cmd = [sys.executable, "-m", "samlabel.tools.commands.benchmark", "--quick", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True)
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert (tmp_path / "benchmark.png").stat().st_size > 10_000

    assert result["peers"]["sam_predictor_litemedsam"]["n"] == 2
    paths = result["litemedsam"]["paths"]
    assert paths["first_click"]["encoder_runs"] == [1], "a slice never seen: the encoder runs once"
    assert set(paths["further_click"]["encoder_runs"]) == {0}, "further clicks on a slice: cache hits"
    assert set(paths["further_click_while_prefetching"]["encoder_runs"]) == {0}
    assert paths["neighbour_click_prefetched"]["encoder_runs"] == [0], "the prefetcher encoded the neighbour"
    (volume,) = result["litemedsam"]["sam_3d"]
    assert volume == {"depth": 12, "slices_propagated": 12}
    assert 0 < paths["sam_3d_12_cold"]["encoder_runs"][0] <= 12
    assert paths["sam_3d_12_after_click"]["encoder_runs"] == [0], "12 slices are within the 16 prefetched"
    assert paths["sam_3d_12_cached"]["encoder_runs"] == [0]
    for path, speedup in result["litemedsam"]["speedup_vs_sam_predictor"].items():
        assert speedup > 0, path

    memory = result["litemedsam"]["memory"]
    assert memory["trace"][-1]["clicks"] == 20
    assert all(t["cache_mb"] <= memory["cache_max_mb"] for t in memory["trace"])
    assert result["environment"]["device"] and result["environment"]["onnxruntime"]
