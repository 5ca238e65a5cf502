"""Everything that drives a server or the package from outside: sample and real data, the REST evaluation,
benchmarks and their peers, the load test, round simulation, local server and Orthanc launchers, DICOM
series export, and the command-line entry points in :mod:`.commands`.

The server never imports anything here (``tests/unit/test_layout.py`` checks its import graph).
"""
