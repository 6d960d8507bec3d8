"""``tcpstack conformance run PATH...``: run scripts, print one line each and a summary.

Exit status 1 if any script failed; skipped scripts do not fail the run (they are counted).
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tcpstack.conformance.runner import Result, run_script

__all__ = ["run_paths", "summary", "add_arguments", "run_from_args", "main"]


def _script_paths(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(sorted(path.rglob("*.pkt")))
        else:
            out.append(path)
    return out


def run_paths(
    paths: Sequence[str], *, strict: bool = False, profile: str | None = None,
    strict_segments: bool = False, tolerance: float | None = None,
) -> list[Result]:
    return [
        run_script(p, strict=strict, profile=profile, strict_segments=strict_segments,
                   tolerance=tolerance)
        for p in _script_paths(paths)
    ]


def summary(results: Sequence[Result]) -> str:
    counts = collections.Counter(r.status for r in results)
    return f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="script files or folders")
    parser.add_argument("--strict", action="store_true",
                        help="match TCP option order and padding, not just the option set")
    parser.add_argument("--profile", choices=("linux", "freebsd"), default=None,
                        help="behaviour profile (default: from the folder, google->linux, "
                             "freebsd->freebsd)")
    parser.add_argument("--strict_segments", "--strict-segments", action="store_true",
                        help="one emitted segment per outbound line (no aggregation)")
    parser.add_argument("--tolerance_usecs", "--tolerance-usecs", type=int, default=None,
                        help="timing tolerance, overriding the scripts' own")
    parser.add_argument("--verbose", "-v", action="store_true", help="print notes under each line")


def run_from_args(args: argparse.Namespace, out: Any = None) -> int:
    out = out or sys.stdout
    tolerance = args.tolerance_usecs / 1e6 if args.tolerance_usecs is not None else None
    results: list[Result] = []
    for path in _script_paths(args.paths):
        result = run_script(path, strict=args.strict, profile=args.profile,
                            strict_segments=args.strict_segments, tolerance=tolerance)
        results.append(result)
        print(result, file=out, flush=True)
        if args.verbose:
            for note in result.notes:
                print(f"    note: {note}", file=out)
    mode = " (strict option matching)" if args.strict else ""
    print(summary(results) + mode, file=out)
    return 1 if any(r.status == "FAIL" for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tcpstack conformance run")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
