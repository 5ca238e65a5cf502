"""Run an nginx load balancer on 127.0.0.1 in front of samlabel replicas, until Ctrl-C.

    scripts/balancer --replica 127.0.0.1:8001 --replica 127.0.0.1:8002           # http://127.0.0.1:8000
    scripts/balancer --port 9000 --replica host-a:8000 --replica host-b:8000 --folder /var/tmp/lb

The replicas must serve one PACS and share one model folder (``--conf model_dir``); see the README's
"Deployment" section.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from samlabel.tools.balancer import BalancerUnavailable, start_balancer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000, help="port the balancer listens on (default 8000)")
    parser.add_argument("--replica", action="append", required=True, help="a replica as host:port (repeat)")
    parser.add_argument("--folder", type=Path, help="nginx's configuration and logs (default: a temporary folder)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="samlabel-balancer-") as tmp:
        folder = args.folder or Path(tmp)
        try:
            balancer = start_balancer(folder, args.port, args.replica)
        except (BalancerUnavailable, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"balancer up: {balancer.url} -> {', '.join(args.replica)}; configuration {folder / 'nginx.conf'}")
        print("Ctrl-C stops it.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            balancer.process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            balancer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
