"""A first labelling session in the real OHIF v3 that MONAI Label serves at /ohif/, in headless Chromium.

Orthanc holds a CT phantom as a DICOM series; the server reads it over DICOMweb. Playwright drives
Debian's chromium (WebGL2 through SwiftShader) the way a radiologist would: study list, MONAI Label
mode, connect the panel, foreground and background points with the point-prompt tool, run ``sam_2d``,
save. The result is checked through the server, in patient space, against the phantom's truth.

Set ``SAMLABEL_OHIF_SHOTS=docs/ohif`` to write the step screenshots where the README shows them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from scipy import ndimage

from samlabel.datastore.pacs import pacs_client
from samlabel.datastore.uids import uid
from samlabel.tools.dicom_export import RAS_TO_LPS, series_datasets, upload
from samlabel.tools.local_server import start_server, stop_server
from samlabel.tools.orthanc import OrthancUnavailable, start_orthanc
from samlabel.tools.sample_data import make_ct_phantom

pytestmark = pytest.mark.slow

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
PATIENT = "P-OHIF"
LIVER = 1

# The volume that the MONAI Label mode shows, once loaded.
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

# The points placed with MONAI Label's probe tool.
JS_PROBES = """() => window.cornerstoneTools.annotation.state.getAllAnnotations()
  .filter(a => a.metadata.toolName === 'ProbeMONAILabel').map(a => a.data.handles.points[0])"""

# OHIF's labelmap: voxel count per OHIF segment index, and each index's label name.
JS_LABELMAP = """() => {
  const service = window.services.segmentationService; const volume = service.getLabelmapVolume('1');
  if (!volume) return null;
  const voxels = volume.voxelManager.getCompleteScalarDataArray(); const counts = {};
  for (let i = 0; i < voxels.length; i++) if (voxels[i]) counts[voxels[i]] = (counts[voxels[i]] || 0) + 1;
  const segments = service.getSegmentation('1').segments;
  return {counts, names: Object.fromEntries(Object.entries(segments).map(([k, s]) => [k, s.label]))};
}"""

# The save of the extension's own MonaiLabelClient.save_label (which no button of this build calls):
# PUT /datastore/label with the labelmap as label.bin (uint8, the volume's voxel order), OHIF's
# alphabetical segment indices mapped back to the server's label values by name.
JS_SAVE = """async ([server, series, values]) => {
  const service = window.services.segmentationService;
  const voxels = service.getLabelmapVolume('1').voxelManager.getCompleteScalarDataArray();
  const toServer = new Uint8Array(256);
  const segments = service.getSegmentation('1').segments;
  for (const [index, s] of Object.entries(segments)) toServer[Number(index)] = values[s.label] || 0;
  const label = new Uint8Array(voxels.length);
  for (let i = 0; i < voxels.length; i++) label[i] = toServer[voxels[i]];
  const form = new FormData();
  form.append('params', JSON.stringify({label_info: [], source: 'ohif'}));
  form.append('label', new Blob([label]), 'label.bin');
  const url = new URL('datastore/label', server); url.searchParams.append('image', series);
  const answer = await fetch(url, {method: 'PUT', body: form});
  return {status: answer.status, body: await answer.text()};
}"""


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


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Orthanc with a CT phantom, the server over its DICOMweb, and a headless Chromium page."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium (.ci/run does)")
    folder = tmp_path_factory.mktemp("ohif")
    try:
        orthanc = start_orthanc(folder / "storage", folder / "orthanc.log")
    except OrthancUnavailable as e:
        pytest.skip(f"no PACS to test against: {e}")
    image, truth = make_ct_phantom(0)
    study, series = uid("ohif", "study"), uid("ohif", "series")
    upload(pacs_client(orthanc.dicomweb, 60), series_datasets(image, "CT", PATIENT, study, series, "phantom CT"))
    conf = ("labels", ",".join(LABELS), "model_dir", str(folder / "model"), "train_every", "3")
    env = {"MONAI_LABEL_DATASTORE_CACHE_PATH": str(folder / "cache")}
    proc, url = start_server(orthanc.dicomweb, folder / "server.log", *conf, env=env)
    shots = Path(os.environ.get("SAMLABEL_OHIF_SHOTS") or folder / "shots")
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        yield {
            "page": page,
            "url": url,
            "orthanc": orthanc,
            "study": study,
            "series": series,
            "image": image,
            "truth": np.asarray(truth.dataobj),
            "shots": shots,
            "folder": folder,
        }
        browser.close()
    stop_server(proc)
    orthanc.stop()


def test_a_first_labelling_session_in_ohif(session):
    page, url, series = session["page"], session["url"], session["series"]
    image, truth = session["image"], session["truth"]
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def shot(name: str) -> None:
        page.screenshot(path=str(session["shots"] / f"{name}.png"))

    # 1. the study list comes from Orthanc through the server's DICOMweb proxy
    page.goto(f"{url}/ohif/", wait_until="domcontentloaded")
    row = page.get_by_text(PATIENT).first
    row.wait_for(timeout=120_000)
    shot("1_study_list")

    # 2. open the study in the MONAI Label mode; wait until the whole volume is loaded
    row.click()
    page.locator(f'[data-cy="mode-monai-label-{session["study"]}"]').click(timeout=30_000)
    page.wait_for_function(
        f"() => {{ const s = ({JS_VOLUME})(); return s && s.viewports >= 3 && s.volumes.length"
        " && s.volumes.every(v => v.loaded); }",
        timeout=300_000,
    )
    assert page.evaluate(JS_VOLUME)["volumes"][0]["dims"] == list(image.shape)
    banner = page.get_by_role("button", name="Confirm and Hide")  # "investigational use" covers the viewports
    if banner.count():
        banner.click()
    shot("2_viewer")

    # 3. connect the MONAI Label panel to this server (its default is port 8000 of the page's host)
    page.fill("#monailabelServerURL", f"{url}/")
    page.click(".settingsTable button.actionButton")
    page.get_by_text("Point Prompts").wait_for(timeout=60_000)
    page.wait_for_timeout(1500)  # the panel colours its segments on a timer
    shot("3_connected")

    # 4. Point Prompts with sam_2d: a foreground click in the liver, a background click outside it
    page.click("label[for='tab-3']")
    tab = page.locator(".tab", has=page.locator("label[for='tab-3']"))
    tab.locator("select.selectBox").select_option("sam_2d")
    k, inside, outside = points(truth, np.asarray(image.dataobj))
    fg_world, bg_world = lps(image.affine, inside), lps(image.affine, outside)
    tab.locator("tr.clickable-row", has_text="liver").click()
    axial = page.evaluate(JS_AXIAL_TO, fg_world)
    page.wait_for_timeout(500)
    page.mouse.click(*page.evaluate(JS_PAGE_XY, [axial, fg_world]))
    page.wait_for_timeout(500)  # the probe tool completes its annotation after the click
    tab.locator("tr.clickable-row", has_text="background").click()
    page.mouse.click(*page.evaluate(JS_PAGE_XY, [axial, bg_world]))
    page.wait_for_timeout(500)
    (placed,) = page.evaluate(JS_PROBES)  # the panel keeps the other row's points aside
    assert np.allclose(placed, bg_world, atol=2), (placed, bg_world)
    shot("4_points")
    tab.locator(
        "tr.clickable-row", has_text="liver"
    ).click()  # Run segments the selected row; each row keeps its points
    with page.expect_response(lambda r: "/infer/sam_2d" in r.url, timeout=180_000) as answer:
        tab.locator("button[title='Run PointPrompts']").click()
    assert answer.value.status == 200, answer.value.text()[:500]
    sent = answer.value.request.post_data or ""
    assert '"foreground":[[' in sent and '"background":[[' in sent, sent[:500]

    # 5. the mask appears in OHIF as the liver segment
    page.wait_for_function(f"() => {{ const m = ({JS_LABELMAP})(); return m && Object.keys(m.counts).length; }}")
    labelmap = page.evaluate(JS_LABELMAP)
    assert {labelmap["names"][index] for index in labelmap["counts"]} == {"liver"}, labelmap
    page.wait_for_timeout(1000)
    shot("5_mask")

    # 6. save from OHIF: the label reaches the datastore and the PACS, and counts toward training
    saved = page.evaluate(JS_SAVE, [f"{url}/", series, LABELS])
    assert saved["status"] == 200, saved
    assert '"saved_since_last_run":1' in saved["body"].replace(" ", ""), saved["body"]
    assert not errors, errors

    # read it back through the server and map it into the phantom's grid through patient space
    answer = requests.get(f"{url}/datastore/label", params={"label": series, "tag": "final"}, timeout=60)
    answer.raise_for_status()
    (session["folder"] / "saved.nii.gz").write_bytes(answer.content)
    label = nib.load(session["folder"] / "saved.nii.gz")
    voxels = np.argwhere(np.asarray(label.dataobj) > 0)
    assert len(voxels) == sum(labelmap["counts"].values())
    assert set(np.unique(np.asarray(label.dataobj))) == {0, LIVER}
    ijk = np.rint(np.linalg.inv(image.affine) @ label.affine @ np.c_[voxels, np.ones(len(voxels))].T)[:3].T
    under = truth[tuple(ijk.astype(int).T)]
    assert set(ijk[:, 2].astype(int)) == {k}, "the mask is on the clicked slice"
    assert np.mean(under == LIVER) > 0.9, np.unique(under, return_counts=True)
    assert np.sum(under == LIVER) > 0.3 * np.sum(truth[:, :, k] == LIVER)
    segs = requests.get(f"{session['orthanc'].dicomweb}/series", params={"Modality": "SEG"}, timeout=30).json()
    assert len(segs) == 1, "stored in the PACS as one DICOM SEG"
