#!/usr/bin/env python3
"""Runs Autobahn TestSuite cases (through the kosoku runner) against a
WebSocket echo URL and prints one line per case section with its verdicts.

Exits 1 when a case is FAILED or could not run (ERROR), unless
--report-only is given (for sections reported but not required, like 9.*).
Writes the per-case verdicts as JSON when --json is given.
"""

import argparse
import asyncio
import json
import os
import sys
from collections import Counter, defaultdict

import kosoku


# Deliberate deviations, reported but not failing the run: 2.10 and 2.11
# send ten pings back to back and expect ten pongs; the engine answers only
# the most recent ping still waiting (RFC 6455 5.5.3 allows it), so a ping
# flood costs one frame, not one per ping.
ALLOWED = {"2.10", "2.11"}


def verdict(r):
    b, c = r.behavior.value, r.behavior_close.value
    # A case passes when both its message exchange and its close are
    # conformant; the close verdict "OK" or "INFORMATIONAL" counts as passing.
    if b in ("FAILED", "ERROR") or c in ("FAILED", "FAILED BY CLIENT", "ERROR", "UNCLEAN"):
        return "FAILED"
    return b


async def run(url, cases, concurrency):
    try:
        return await kosoku.run_fuzzingclient(url, cases, None, concurrency=concurrency)
    except kosoku.FailureError as failure:
        return failure.results


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url")
    ap.add_argument("cases", nargs="+", help="case ids or globs, e.g. 1.* 10.*")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--json", help="write {case: verdict} here")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()

    results = asyncio.run(run(args.url, args.cases, args.concurrency))
    by_section = defaultdict(Counter)
    verdicts = {}
    for r in results:
        v = verdict(r)
        verdicts[r.case_id] = {
            "verdict": v,
            "behavior": r.behavior.value,
            "close": r.behavior_close.value,
            "ms": r.duration,
        }
        by_section[r.case_id.split(".")[0]][v] += 1
    for section in sorted(by_section, key=int):
        counts = ", ".join(f"{k} {n}" for k, n in sorted(by_section[section].items()))
        print(f"autobahn {section}.*: {counts}")
    failed = sorted(
        c for c, v in verdicts.items() if v["verdict"] == "FAILED" and c not in ALLOWED
    )
    for c in sorted(ALLOWED & verdicts.keys()):
        if verdicts[c]["verdict"] == "FAILED":
            print(f"autobahn deviation {c}: one pong for pings sent back to back (RFC 6455 5.5.3)")
    for c in failed:
        v = verdicts[c]
        print(f"autobahn FAILED {c}: behavior {v['behavior']}, close {v['close']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(verdicts, f, indent=1, sort_keys=True)
    if not results:
        print("autobahn: no case ran", file=sys.stderr)
        return 1
    print(f"autobahn: {len(results)} cases, {len(failed)} failed")
    return 0 if args.report_only or not failed else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The runner's native threads can abort the interpreter's teardown after
    # the results are in (seen once after 9.*); the verdict is already made.
    os._exit(code)
