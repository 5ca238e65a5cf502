"""An HTTP proxy in front of a real PACS that can fail on purpose, for the PACS fault tests.

Modes: ``pass`` forwards everything; ``down`` drops every connection unanswered; ``slow`` forwards a
STOW but answers only after ``delay_s``; ``stow_500`` answers a STOW with 500; ``stow_empty`` answers a
STOW with 200 and an empty JSON body without forwarding it (a PACS that stores nothing).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


class FaultyPacsProxy:
    def __init__(self, target: str, delay_s: float = 5.0):
        self.target, self.delay_s, self.mode = target.rstrip("/"), delay_s, "pass"
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stow = self.command == "POST"
                if proxy.mode == "down":
                    self.close_connection = True
                    return
                if stow and proxy.mode == "stow_500":
                    return self._answer(500, b"storage failure", "text/plain")
                if stow and proxy.mode == "stow_empty":
                    return self._answer(200, b"{}", "application/dicom+json")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS | {"host"}}
                answer = requests.request(self.command, proxy.target + self.path, headers=headers, data=body)
                if stow and proxy.mode == "slow":
                    time.sleep(proxy.delay_s)
                self._answer(answer.status_code, answer.content, answer.headers.get("Content-Type", ""))

            def _answer(self, status: int, content: bytes, content_type: str):
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
