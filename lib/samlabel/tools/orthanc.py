"""Start and stop a throwaway Orthanc PACS (Debian's ``orthanc`` + ``orthanc-dicomweb``) on 127.0.0.1.

Orthanc keeps everything in one storage folder, so a demo or a test gets a PACS of its own that
disappears with the folder. Only HTTP (REST and DICOMweb under ``/dicom-web``) is opened; the DICOM
port stays closed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from samlabel.tools.local_server import free_port

ORTHANC_BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL_HINT = "install it with: apt-get install orthanc orthanc-dicomweb"


class OrthancUnavailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed."""


@dataclass
class Orthanc:
    process: subprocess.Popen
    url: str  # REST root, e.g. http://127.0.0.1:8042

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def orthanc_binary() -> str:
    """Path of the Orthanc executable; :class:`OrthancUnavailable` says how to install what is missing."""
    binary = shutil.which(ORTHANC_BINARY) or shutil.which(ORTHANC_BINARY, path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        raise OrthancUnavailable(f"Orthanc is not installed; {INSTALL_HINT}")
    if not DICOMWEB_PLUGIN.exists():
        raise OrthancUnavailable(f"Orthanc's DICOMweb plugin ({DICOMWEB_PLUGIN}) is missing; {INSTALL_HINT}")
    return binary


def start_orthanc(storage: Path, log: Path, port: int | None = None, timeout_s: float = 60) -> Orthanc:
    """Run Orthanc with its database in ``storage``; return once its REST API answers."""
    binary = orthanc_binary()
    storage.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = {
        "Name": "samlabel",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "RemoteAccessAllowed": False,  # loopback clients only
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "SeriesMetadata": "Full"},
    }
    config_file = storage / "orthanc.json"
    config_file.write_text(json.dumps(config, indent=2))
    process = subprocess.Popen([binary, str(config_file)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/dicom-web/studies", timeout=2).status_code == 200:
                return Orthanc(process, url)
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"Orthanc did not answer within {timeout_s} s:\n{log.read_text()[-3000:]}")
