#!/usr/bin/env python3
"""The code a request runs: instructions, and distinct 64-byte lines of machine code,
per request when requests arrive one at a time.

Why: at 2,000 req/s each request finds the caches cold (the backend and the kernel ran
since the last one), and the proxy's user time per request then follows how much code
it touches, not how many instructions it executes: measured here, Weft's plain `dist`
build spent twice nginx's and the bare hyper fixture's user time per request at that
rate, for a third more instructions but half again as many code lines (docs/benchmarks.md,
"Fifteenth session"). At saturation the same code stays cached and the instruction
count is what shows.

How: runs the binary under callgrind (`--dump-instr=yes`, so costs are kept per
instruction address) in front of benches/orderfile.py's backend, sends 200 requests
to warm it, zeroes the counts, then sends REQUESTS more over one keep-alive connection,
one at a time (curl), and counts the lines whose instructions ran at least 0.9 times
per request: the lines every request needs. The same for the filter chain with
`--filter`.

    python3 benches/footprint.py [--filter] [--requests N] [--top K]
    WEFT=PATH python3 benches/footprint.py     # another build (the profile-guided one)

Needs valgrind and curl.
"""
import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile

import orderfile

LINE = 64
PAGE = 4096


def per_address(path):
    """Instructions executed at each address of each object, and the function that
    holds each address, from a callgrind file written with `--dump-instr=yes`."""
    cost, owner = collections.Counter(), {}
    for ob, fn, addr, c in orderfile.callgrind_costs(path):
        cost[(ob, addr)] += c
        owner[(ob, addr)] = fn
    return cost, owner


def measure(with_filter, requests, tmp):
    backends = orderfile.Backends(tmp)
    proxy = orderfile.proxy_args(backends, with_filter, tmp)
    out = os.path.join(tmp, "callgrind.out")
    argv = ["valgrind", "--tool=callgrind", "--dump-instr=yes", f"--callgrind-out-file={out}",
            orderfile.WEFT, "--log", "warn"] + proxy.command
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    url = f"http://{proxy.listen}/"
    try:
        orderfile.wait_ready(proxy.admin, proc)
        subprocess.run(["curl", "-s"] + [url] * 200, **quiet)
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], **quiet, check=True)
        done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\\n"] + [url] * requests,
                              capture_output=True, text=True).stdout.split()
        if done.count("200") != requests:
            sys.exit(f"only {done.count('200')} of {requests} requests were answered 200")
        subprocess.run(["callgrind_control", "--dump=measured", str(proc.pid)], **quiet, check=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        backends.shutdown()
    dumps = [f for f in os.listdir(tmp) if f.startswith("callgrind.out.")]
    measured = [os.path.join(tmp, f) for f in dumps if "measured" in open(os.path.join(tmp, f)).read(4096)]
    if not measured:
        sys.exit("callgrind wrote no measured dump")
    return per_address(measured[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--filter", action="store_true", help="with the bench filter in the chain")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--top", type=int, default=25, help="functions to list, by lines")
    a = ap.parse_args()
    if not os.path.exists(orderfile.WEFT):
        sys.exit(f"{orderfile.WEFT} is missing: run `cargo build --profile dist -p weft` first")
    with tempfile.TemporaryDirectory() as tmp:
        cost, owner = measure(a.filter, a.requests, tmp)
    n = a.requests
    lines = collections.Counter()
    for (ob, addr), c in cost.items():
        lines[(ob, addr // LINE)] += c
    hot = {k for k, c in lines.items() if c / n >= 0.9}
    line_owner = {(ob, addr // LINE): owner[(ob, addr)] for (ob, addr) in cost}
    by_object = collections.Counter(ob for ob, _ in hot)
    pages = {(ob, line * LINE // PAGE) for ob, line in hot}
    print(f"{sum(cost.values()) / n:,.0f} instructions per request")
    print(f"{len(hot)} code lines ({len(hot) * LINE // 1024} KiB) in {len(pages)} pages run by every request")
    for ob, count in by_object.most_common():
        print(f"  {count:6d} lines  {os.path.basename(ob or '?')}")
    by_function, instructions = collections.Counter(), collections.Counter()
    for key in hot:
        by_function[line_owner[key]] += 1
    for (ob, addr), c in cost.items():
        instructions[owner[(ob, addr)]] += c
    print(f"\n lines  instr/req  function (self code)")
    for fn, count in by_function.most_common(a.top):
        print(f"{count:6d} {instructions[fn] / n:10,.0f}  {(fn or '?')[:120]}")


if __name__ == "__main__":
    main()
