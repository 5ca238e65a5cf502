"""Every change this app makes to MONAI Label's HTTP app, installed by :func:`.install.install` once the
server has started: non-blocking and checked endpoints, the adapter-version endpoints, token checks,
CORS, body limits, and 4xx answers for bad requests.

Written against monailabel 0.8.5 (:data:`.install.MONAILABEL_VERSION`); imported only by the app.
"""
