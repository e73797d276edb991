#!/usr/bin/env python3
"""Turns the callgrind dumps of scripts/profile.sh into docs/benchmarks/callgrind.md:
instructions per request of the core and the edge, whole and by crate (self cost of every
function, attributed to the crate its symbol names first; C library calls to `libc`)."""

import argparse
import collections
import datetime
import glob
import re
import subprocess

LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$")
CRATE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)::")


def function_name(symbol):
    """`file:function [object]` as callgrind_annotate prints it, down to the function."""
    name = re.sub(r"\s*\[[^\]]*\]\s*$", "", symbol).strip()
    if name.startswith("???:"):
        return name[len("???:"):]
    return name


def crate_of(symbol):
    """The crate a demangled symbol belongs to, by the first path it names."""
    name = function_name(symbol)
    if re.match(r"^\.?/[^:]*:", name):  # a C library function, named with its source file
        name = name.split(":", 1)[1]
    # `core::ptr::drop_in_place<h2::...>` and friends: the type decides.
    generic = re.match(r"^(?:core|alloc)::ptr::drop_in_place<(.*)>$", name)
    if generic:
        name = generic.group(1).lstrip("<")
    name = re.sub(r"^(?:[<&*(]|mut |dyn |const )+", "", name)
    match = CRATE.match(name) or CRATE.search(name)
    if match:
        return match.group(1)
    if name.startswith(("0x", "???")):
        return "(unknown)"
    return "libc"


def costs(path):
    """Total instructions and self cost per function of one dump."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    total = 0
    functions = []
    for line in out.splitlines():
        if "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
            continue
        match = LINE.match(line)
        if match and not line.strip().endswith("PROGRAM TOTALS"):
            functions.append((int(match.group(1).replace(",", "")), match.group(2)))
    # Frames that were on a stack when the counters were zeroed (the runtime's worker loop)
    # are charged the whole total: not self cost, dropped.
    return total, [(cost, name) for cost, name in functions if cost < 0.999 * total]


def dump_of(work, process, scenario):
    """The dump `callgrind_control -d <scenario>` wrote for `process`."""
    for path in sorted(glob.glob(f"{work}/{process}.out.*")):
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
        if re.search(rf"^desc: Trigger: (?:Client Request: |dump )?{scenario}$", head, re.M):
            return path
    raise SystemExit(f"no callgrind dump of {process} for {scenario} in {work}")


LABELS = {"core": "core", "edge": "edge", "replica": "combined replica"}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    names = {
        "s2": "Scenario 2, `POST /v1/chat/completions` (stateless)",
        "s1": "Scenario 1, `POST /api/v1/sessions/{id}/messages` (10-turn history)",
    }
    lines = [
        "# Instructions per request (callgrind)",
        "",
        f"Generated {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `scripts/profile.sh callgrind`:",
        f"release binaries under valgrind's callgrind, counters zeroed after a warm-up, then {args.calls}",
        "requests of each kind one at a time through edge → core → Redis → fake upstream, then through",
        "a combined replica (`openclaw-gateway serve --http-addr`: edge and core in one process). User-space",
        "instructions only (the kernel's share, sockets and wake-ups, is not counted: see the",
        "flamegraphs for it). Self cost of every function, attributed to the crate its symbol names",
        "first; `libc` is the C library (malloc, memcpy, syscall wrappers).",
        "",
    ]
    for scenario in ("s2", "s1"):
        lines += [f"## {names[scenario]}", ""]
        per_process = {}
        for process in ("core", "edge", "replica"):
            total, functions = costs(dump_of(args.work, process, scenario))
            by_crate = collections.Counter()
            for cost, symbol in functions:
                by_crate[crate_of(symbol)] += cost
            per_process[process] = (total, by_crate, functions)
        lines += ["| process | instructions per request |", "|---|---:|"]
        for process, (total, _, _) in per_process.items():
            lines.append(f"| {LABELS[process]} | {total / args.calls:,.0f} |")
        split = per_process["core"][0] + per_process["edge"][0]
        lines.append(f"| core + edge | {split / args.calls:,.0f} |")
        lines.append("")
        for process, (total, by_crate, functions) in per_process.items():
            lines += [
                f"**{LABELS[process]}**, by crate (top 12) and by function (top 12), instructions per request:",
                "",
                "| crate | per request | share |",
                "|---|---:|---:|",
            ]
            for crate, cost in by_crate.most_common(12):
                lines.append(f"| `{crate}` | {cost / args.calls:,.0f} | {100 * cost / total:.1f} % |")
            lines += ["", "| function | per request | share |", "|---|---:|---:|"]
            for cost, symbol in sorted(functions, reverse=True)[:12]:
                name = function_name(symbol).replace("|", "\\|")
                if len(name) > 110:
                    name = name[:107] + "..."
                lines.append(f"| `{name}` | {cost / args.calls:,.0f} | {100 * cost / total:.1f} % |")
            lines.append("")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
