#!/usr/bin/env python3
"""Weft side by side with the reference proxies, in one run, on this machine.

Drives the shared harness (../shared/bench/bench.py: wrk for closed-loop throughput,
oha at a fixed 2,000 req/s for latency, VmHWM and CPU per request for the proxy), with
Weft's scenarios added next to its anchors:

  W0  weft proxy, no filter
  W1  weft proxy + the bench filter (same work as Envoy's proxy-wasm filter in C)
  W4  weft proxy + a chain of 4 bench filters
  W1P, W4P  as W1 and W4 with the filter in its two-phase form (state in a request value,
       the header set in the response phase: two calls per request, as proxy-wasm needs)
  WF  weft proxy + 1 bench filter, a fresh instance per request (instance_reuse = 1)
  WN  weft proxy + 1 bench filter that does nothing (`{"floor": true}`): one call into the
       guest per request and no host call, the floor under any filter's cost
  WE  weft proxy + the example filter (examples/hello-filter: an API-key check, a counter,
       a response header), every request carrying the right key

Usage (after `bash ../shared/bench/run-anchors.sh` has installed Envoy, oha, wrk, nginx):
  python3 benches/run.py --scenarios A,B,C,F,W0,W1,W4 --runs 2 --out /tmp/weft-bench.json

Weft runs with one worker on the proxy CPU, access log off (as nginx's config has it),
built with the `dist` profile by default (`cargo build --profile dist -p weft`: whole-program
LTO); WEFT=PATH measures another binary (the profile-guided one benches/pgo.py builds, what
one deploys), WEFT_PROFILE=release the faster-to-build `release` binary.
"""
import os
import subprocess
import sys
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.environ.get("WEFT_BENCH_HARNESS", os.path.join(ROOT, "..", "shared", "bench"))
sys.path.insert(0, SHARED)
import bench  # noqa: E402  (the shared harness)
import orderfile  # noqa: E402  (the code layout, to warn when it is stale)

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.environ["HOME"], ".cache", "weft-target"))
PROFILE = os.environ.get("WEFT_PROFILE", "dist")
WEFT = os.environ.get("WEFT", os.path.join(TARGET, PROFILE, "weft"))
FILTER = os.path.join(TARGET, "wasm32-wasip2", "release", "bench_filter.wasm")
HELLO = os.path.join(TARGET, "wasm32-wasip2", "release", "hello_filter.wasm")
HELLO_KEY = "bench-key"
LISTEN = "127.0.0.1:18120"


def weft_argv(filters, two_phase=False, spec=None):
    argv = [WEFT, "--log", "warn", "proxy", "--listen", LISTEN, "--to", f"http://127.0.0.1:{bench.BACKEND_PORT}",
            "--workers", "1"]
    spec = spec or FILTER + ('={"two_phase": true}' if two_phase else "")
    for _ in range(filters):
        argv += ["--filter", spec]
    return argv


def weft_config(run_dir, reuse):
    """WF needs a limit the CLI does not expose, so it runs from a config file."""
    path = os.path.join(run_dir, "weft-fresh.toml")
    with open(path, "w") as f:
        f.write(f"""[admin]
enabled = false
[runtime]
workers = 1
watch_config = false
[[listeners]]
name = "bench"
address = "{LISTEN}"
cluster = "nginx"
chain = "bench"
[[clusters]]
name = "nginx"
endpoints = ["127.0.0.1:{bench.BACKEND_PORT}"]
[[filters]]
name = "bench"
module = "{FILTER}"
[filters.limits]
instance_reuse = {reuse}
[[chains]]
name = "bench"
filters = ["bench"]
""")
    return [WEFT, "--log", "warn", "run", "--config", path]


WEFT_SCENARIOS = {
    "W0": ("W0 weft, no filter", lambda rd: weft_argv(0), None),
    "W1": ("W1 weft + 1 Wasm filter", lambda rd: weft_argv(1), ("x-wasm-filter", "seen")),
    "W4": ("W4 weft + 4 Wasm filters", lambda rd: weft_argv(4), ("x-wasm-filter", "seen")),
    "W1P": ("W1P weft + 1 Wasm filter, two phases", lambda rd: weft_argv(1, True), ("x-wasm-filter", "seen")),
    "W4P": ("W4P weft + 4 Wasm filters, two phases", lambda rd: weft_argv(4, True), ("x-wasm-filter", "seen")),
    "WN": ("WN weft + 1 Wasm filter doing nothing (the floor)",
           lambda rd: weft_argv(1, spec=FILTER + '={"floor": true}'), None),
    "WF": ("WF weft + 1 Wasm filter, fresh instance per request", lambda rd: weft_config(rd, 1), ("x-wasm-filter", "seen")),
    "WE": ("WE weft + the example filter (hello-filter)",
           lambda rd: weft_argv(1, spec=HELLO + '={"key": "%s"}' % HELLO_KEY), ("x-filtered-by", "hello-filter")),
}
# What each scenario's requests carry besides the harness's `x-bench-in: 1`.
EXTRA_HEADERS = {"WE": [f"x-api-key: {HELLO_KEY}"]}


class WithHeaders:
    """The harness's `subprocess`, adding headers to the load generators' requests (bench.py
    sends only `x-bench-in: 1`; the example filter answers 401 without its key)."""

    def __init__(self, headers):
        self.headers = headers

    def run(self, argv, **kw):
        if any(os.path.basename(arg) in ("wrk", "oha") for arg in argv):
            extra = [arg for h in self.headers for arg in ("-H", h)]
            argv = argv[:-1] + extra + argv[-1:]  # the URL stays last
        return subprocess.run(argv, **kw)

    def __getattr__(self, name):
        return getattr(subprocess, name)


def check_with_headers(port, headers, want):
    """Proof the filter ran: 401 without the extra headers, 200 and `want` with them."""
    url = f"http://127.0.0.1:{port}/"
    try:
        urllib.request.urlopen(url, timeout=5)
        raise RuntimeError(f"{url} answered without the key")
    except urllib.error.HTTPError as e:
        if e.code != 401:
            raise RuntimeError(f"{url} without the key: status {e.code}, want 401") from e
    pairs = dict(h.split(": ", 1) for h in headers)
    with urllib.request.urlopen(urllib.request.Request(url, headers=pairs), timeout=5) as r:
        if r.status != 200 or r.headers.get(want[0]) != want[1]:
            raise RuntimeError(f"{url} with the key: status {r.status}, headers {dict(r.headers)}")
        return dict(status=r.status, bytes=len(r.read()), headers=dict(r.headers))


for key, (name, _, _) in WEFT_SCENARIOS.items():
    bench.SCENARIOS[key] = dict(name=name, port=int(LISTEN.rsplit(":", 1)[1]))

_start = bench.start_scenario
_http_check = bench.http_check
_current = {}  # the scenario being measured: its extra headers and the header its filter adds


def start_scenario(key, a, run_dir):
    extra = EXTRA_HEADERS.get(key)
    _current.update(extra=extra, want=WEFT_SCENARIOS.get(key, (None, None, None))[2])
    bench.subprocess = WithHeaders(extra) if extra else subprocess
    if key not in WEFT_SCENARIOS:
        return _start(key, a, run_dir)
    _, argv, want = WEFT_SCENARIOS[key]
    proc = bench.Proc(key.lower(), argv(run_dir), a.sut_cpus, a.nice, os.path.join(run_dir, f"{key}.out"))
    if not bench.wait_port(bench.SCENARIOS[key]["port"]):
        raise RuntimeError(f"{key}: weft did not start; see {run_dir}/{key}.out")
    # Proof the filters ran, before anything is measured.
    http_check(bench.SCENARIOS[key]["port"], want)
    return [proc]


def http_check(port, want_header=None, timeout=30.0):
    """bench.py's check, or for a scenario whose requests need extra headers, ours."""
    if _current.get("extra"):
        return check_with_headers(port, _current["extra"], _current["want"])
    return _http_check(port, want_header, timeout)


bench.start_scenario = start_scenario
bench.http_check = http_check

if __name__ == "__main__":
    for path in (WEFT, FILTER, HELLO):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: CARGO_TARGET_DIR={TARGET} cargo build --profile {PROFILE} -p weft "
                     "&& .ci/build-filters")
    found, listed = orderfile.coverage(WEFT)
    if PROFILE == "dist" and found < 0.9 * listed:
        print(f"warning: {WEFT} has {found} of the {listed} functions proxy/weft.order lays out; renew "
              "the layout (python3 benches/orderfile.py, then rebuild) or these figures measure a worse one",
              file=sys.stderr)
    bench.main()
