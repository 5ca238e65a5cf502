"""A first labelling session in the real OHIF v3 that MONAI Label serves at /ohif/, in headless Chromium.

Orthanc holds a CT phantom as a DICOM series; the server reads it over DICOMweb. Playwright drives
Debian's chromium (WebGL2 through SwiftShader) the way a radiologist would: study list, MONAI Label
mode, connect the panel, foreground and background points with the point-prompt tool, run ``sam_2d``,
save. The result is checked through the server, in patient space, against the phantom's truth.

Set ``SAMLABEL_OHIF_SHOTS=docs/ohif`` to write the step screenshots where the README shows them.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import requests
from ohif_session import JS_AXIAL_TO, JS_PAGE_XY, LABELS, LIVER, lps, ohif_session, points, wait_for_volume

pytestmark = pytest.mark.slow

PATIENT = "P-OHIF"

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


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Orthanc with a CT phantom, the server over its DICOMweb, and a headless Chromium page."""
    with ohif_session(tmp_path_factory.mktemp("ohif"), "SAMLABEL_OHIF_SHOTS", {"ohif": PATIENT}) as session:
        (study,) = session["studies"]
        yield {**session, **study, "truth": np.asarray(study["truth"].dataobj)}


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
    wait_for_volume(page, image.shape)
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
