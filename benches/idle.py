#!/usr/bin/env python3
"""What an idle proxy costs: CPU time and wake-ups while no request arrives.

Why: a mesh runs one sidecar per service instance, most of them idle most of the time,
so a proxy that wakes for nothing costs every host a little, all day. The thread to
watch is the epoch ticker (`weft-epoch`), which a proxy with filters runs to make long
filter calls yield and to count their CPU time; it parks while no filter is called
(docs/benchmarks.md, "The epoch ticker at rest").

How: starts `weft proxy` with the bench filter (or none, `--no-filter`), waits for
it to settle, then reads over SECONDS, from /proc, each thread's context switches and
the process's user and system time.

    python3 benches/idle.py [--seconds N] [--no-filter]
    WEFT=PATH python3 benches/idle.py        # another build

Needs the `dist` build and the bench filter (benches/orderfile.py's paths), and curl.
"""
import argparse
import os
import subprocess
import sys
import time

import orderfile


def switches(pid):
    """Context switches so far, per thread name (threads of one name added up)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                n = sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:
            continue
        out[name] = out.get(name, 0) + n
    return out


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--no-filter", action="store_true")
    args = ap.parse_args()
    for path in (orderfile.WEFT,) + (() if args.no_filter else (orderfile.FILTER,)):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: build it first (see this script's docstring)")
    admin = f"127.0.0.1:{orderfile.free_port()}"
    argv = [orderfile.WEFT, "--log", "warn", "proxy", "--listen", f"127.0.0.1:{orderfile.free_port()}",
            "--admin", admin, "--to", "http://127.0.0.1:9"]
    if not args.no_filter:
        argv += ["--filter", orderfile.FILTER]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        orderfile.wait_ready(admin, proc)
        time.sleep(1)
        before, cpu0 = switches(proc.pid), cpu_seconds(proc.pid)
        time.sleep(args.seconds)
        after, cpu1 = switches(proc.pid), cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
    print(f"{os.path.basename(orderfile.WEFT)}, {'no filter' if args.no_filter else 'bench filter'}, "
          f"idle {args.seconds:g} s: CPU {1000 * (cpu1 - cpu0):.0f} ms")
    for name in sorted(after):
        woke = after[name] - before.get(name, 0)
        print(f"  {name:<20} {woke:>6} wake-ups ({woke / args.seconds:.1f}/s)")


if __name__ == "__main__":
    main()
