"""List, inspect and roll back the adapter versions of a running samlabel server.

    scripts/adapter_versions [--server URL] list
    scripts/adapter_versions [--server URL] show VERSION
    scripts/adapter_versions [--server URL] rollback [VERSION]

`rollback` without a version serves the version the served one was trained from. The server loads it
on its next infer request; a restart keeps serving it.
"""

import argparse
import json
import sys

import requests

from samlabel.tools.rest import RestError, Server


def table(listing: dict) -> str:
    rows = [("", "version", "gate", "created", "parent", "dice_1", "dice_3", "box", "new labels", "reason")]
    for v in listing["versions"]:
        m = v["metrics"]
        rows.append(
            (
                "*" if v["served"] else "",
                v["version"],
                v["gate"],
                v["created"][:19],
                v["parent"],
                *(f"{m[k]:.3f}" if k in m else "" for k in ("dice_1", "dice_3", "dice_box")),
                str(len(v["new_labels"])),
                v["reason"][:70],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines + [f"(* served: {listing['served']})"])


def main(argv: list[str] | None = None) -> int | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every version, its gate outcome and validation Dice")
    commands.add_parser("show", help="one version's full record (JSON)").add_argument("version")
    commands.add_parser("rollback", help="serve an earlier version").add_argument("version", nargs="?")
    args = parser.parse_args(argv)

    server = Server.at(args.server)
    try:
        if args.command == "list":
            answer = server.versions()
        elif args.command == "show":
            answer = server.version(args.version)
        else:
            answer = server.rollback(args.version)
    except requests.ConnectionError:
        sys.exit(f"no samlabel server answers at {args.server}; start one with ./scripts/serve or pass --server")
    except RestError as e:
        sys.exit(f"{e.status_code}: {e.detail}")
    print(table(answer) if args.command == "list" else json.dumps(answer, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
