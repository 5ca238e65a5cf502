"""Run a throwaway Orthanc PACS on 127.0.0.1 with the sample studies in it, until Ctrl-C.

    scripts/orthanc                  # http://127.0.0.1:8042, DICOMweb at /dicom-web
    scripts/orthanc --keep data/pacs # keep the PACS's files in data/pacs

Then serve it: SAMLABEL_STUDIES=http://127.0.0.1:8042/dicom-web ./scripts/serve
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from samlabel.datastore.pacs import pacs_client
from samlabel.tools.dicom_export import upload_studies
from samlabel.tools.orthanc import OrthancUnavailable, start_orthanc
from samlabel.tools.sample_data import write_sample_studies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8042, help="HTTP port (default 8042)")
    parser.add_argument("--keep", type=Path, help="storage folder to keep (default: a temporary one, deleted at exit)")
    parser.add_argument(
        "--studies",
        type=Path,
        default=Path("data/sample/studies"),
        help="NIfTI studies to upload as DICOM series (default: the sample studies, data/sample/studies under "
        "the working directory; written if missing)",
    )
    parser.add_argument("--no-upload", action="store_true", help="start an empty PACS")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="samlabel-orthanc-") as tmp:
        storage = args.keep or Path(tmp) / "storage"
        try:
            orthanc = start_orthanc(storage, Path(tmp) / "orthanc.log", port=args.port)
        except (OrthancUnavailable, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            if not args.no_upload:
                if not args.studies.is_dir():
                    write_sample_studies(args.studies.parent)
                files = sorted(args.studies.glob("*.nii*"))
                uploaded = upload_studies(pacs_client(orthanc.dicomweb, 60), files)
                for name, series in uploaded.items():
                    print(f"{name:>16}  SeriesInstanceUID {series}")
            print(f"\nOrthanc is up: {orthanc.url} (DICOMweb: {orthanc.dicomweb}); storage {storage}")
            print(f"serve it with:  SAMLABEL_STUDIES={orthanc.dicomweb} ./scripts/serve")
            print("Ctrl-C stops it.", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            orthanc.process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            orthanc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
