"""What the OHIF tests share: Orthanc holding CT phantoms, the server over its DICOMweb, headless Chromium,
and page scripts that read where cornerstone shows a point (for real mouse clicks there)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from samlabel.datastore.pacs import pacs_client
from samlabel.datastore.uids import uid
from samlabel.tools.dicom_export import RAS_TO_LPS, series_datasets, upload
from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.orthanc import OrthancUnavailable, start_orthanc
from samlabel.tools.sample_data import make_ct_phantom

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-gl=angle",
    "--use-angle=swiftshader",  # WebGL2 on the CPU, which cornerstone3D needs
    "--enable-unsafe-swiftshader",
]
LABELS = {"liver": 1, "spleen": 2, "kidney": 3}
LIVER = 1

# The volume that the viewer shows, once loaded.
JS_VOLUME = """() => {
  const cs = window.cornerstone; const engine = cs && cs.getRenderingEngines()[0];
  if (!engine) return null;
  const volumes = cs.cache.getVolumes();
  return {viewports: engine.getViewports().length,
          volumes: volumes.map(v => ({loaded: !!(v.loadStatus && v.loadStatus.loaded), dims: v.dimensions}))};
}"""

# Scroll the axial viewport to the plane through a world (LPS) point; return its id.
JS_AXIAL_TO = """(world) => {
  const viewport = window.cornerstone.getRenderingEngines()[0].getViewports()
    .find(v => Math.abs(v.getCamera().viewPlaneNormal[2]) > 0.9);
  const camera = viewport.getCamera(), n = camera.viewPlaneNormal, f = camera.focalPoint;
  const d = (world[0] - f[0]) * n[0] + (world[1] - f[1]) * n[1] + (world[2] - f[2]) * n[2];
  const shift = (p) => p.map((v, i) => v + d * n[i]);
  viewport.setCamera({focalPoint: shift(f), position: shift(camera.position)});
  viewport.render();
  return viewport.id;
}"""

# Page coordinates of a world point in a viewport, for a real mouse click.
JS_PAGE_XY = """([viewportId, world]) => {
  const viewport = window.cornerstone.getRenderingEngines()[0].getViewport(viewportId);
  const [x, y] = viewport.worldToCanvas(world); const box = viewport.element.getBoundingClientRect();
  return [box.left + x, box.top + y];
}"""


def wait_for_volume(page, shape: tuple[int, ...]) -> None:
    """Wait until the viewer's three viewports show the whole volume, and check its shape."""
    page.wait_for_function(
        f"() => {{ const s = ({JS_VOLUME})(); return s && s.viewports >= 3 && s.volumes.length"
        " && s.volumes.every(v => v.loaded); }",
        timeout=300_000,
    )
    assert page.evaluate(JS_VOLUME)["volumes"][0]["dims"] == list(shape)


def lps(affine: np.ndarray, ijk) -> list[float]:
    """World coordinates of a voxel as cornerstone uses them (DICOM's LPS)."""
    return (RAS_TO_LPS @ affine @ [*ijk, 1.0])[:3].tolist()


def points(truth: np.ndarray, image: np.ndarray) -> tuple[int, tuple, tuple]:
    """The liver's largest slice, its deepest voxel, and a body voxel of no organ far from the liver."""
    liver = truth == LIVER
    k = int(np.argmax(liver.sum(axis=(0, 1))))
    depth = ndimage.distance_transform_edt(liver[:, :, k])
    inside = np.unravel_index(int(np.argmax(depth)), depth.shape)
    body = image[:, :, k] > -300
    far = ndimage.distance_transform_edt(~liver[:, :, k]) > 12
    candidates = np.argwhere((truth[:, :, k] == 0) & far & (ndimage.distance_transform_edt(body) > 4))
    outside = candidates[np.argmin(np.linalg.norm(candidates - inside, axis=1))]
    return k, (int(inside[0]), int(inside[1]), k), (int(outside[0]), int(outside[1]), k)


@contextmanager
def ohif_session(folder: Path, shots_env: str, patients: dict[str, str], train_every: int = 3) -> Iterator[dict]:
    """Orthanc holding one CT phantom per ``patients`` entry (uid key -> PatientID), the server over its
    DICOMweb, and a headless Chromium page; skips, saying why, where Chromium or Orthanc is missing.

    Screenshots go to the folder named by the environment variable ``shots_env``, or a temporary one."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (.ci/run does)")
    try:
        orthanc = start_orthanc(folder / "storage", folder / "orthanc.log")
    except OrthancUnavailable as e:
        pytest.skip(f"no PACS to test against: {e}")
    studies = []
    for seed, (key, patient) in enumerate(patients.items()):
        image, truth = make_ct_phantom(seed)
        study, series = uid(key, "study"), uid(key, "series")
        datasets = series_datasets(image, "CT", patient, study, series, "phantom CT")
        upload(pacs_client(orthanc.dicomweb, 60), datasets)
        studies.append({"patient": patient, "study": study, "series": series, "image": image, "truth": truth})
    conf = ("labels", ",".join(LABELS), "model_dir", str(folder / "model"), "train_every", str(train_every))
    env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(folder / "cache")}
    proc, url = start_server(orthanc.dicomweb, folder / "server.log", *conf, env=env)
    shots = Path(os.environ.get(shots_env) or folder / "shots")
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            yield {"page": page, "url": url, "orthanc": orthanc, "studies": studies, "shots": shots, "folder": folder}
            browser.close()
    finally:
        stop_server(proc)
        orthanc.stop()
