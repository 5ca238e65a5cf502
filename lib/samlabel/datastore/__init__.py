"""Where images and labels live: the safe local datastore (:mod:`.local`), the DICOMweb PACS datastore
(:mod:`.pacs`), labels as DICOM SEG (:mod:`.dicom_seg`) and stable DICOM UIDs (:mod:`.uids`).

Imported by the app and the server; imports nothing of inference or training.
"""
