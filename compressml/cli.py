"""The ``compressml`` command. User mistakes end as one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import sys

from compressml.errors import CompressMLError


def _download_kodak(args: argparse.Namespace) -> int:
    from compressml.data.kodak import KODAK_URL, default_cache_dir, download_kodak

    dest = download_kodak(args.dest or default_cache_dir() / "kodak", base_url=args.url or KODAK_URL)
    print(f"Kodak images ready in {dest} (SHA-256 verified); use them with: python train.py ... or data=kodak data.root={dest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compressml", description="Learned image compression, config-driven.")
    sub = parser.add_subparsers(dest="command", required=True)
    kodak = sub.add_parser("download-kodak", help="fetch the 24 Kodak images into a local cache, checksum-verified")
    kodak.add_argument("--dest", help="target folder (default: $COMPRESSML_CACHE/kodak or ~/.cache/compressml/kodak)")
    kodak.add_argument("--url", help="base URL of a Kodak mirror (default: the public r0k.us mirror)")
    kodak.set_defaults(func=_download_kodak)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CompressMLError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
