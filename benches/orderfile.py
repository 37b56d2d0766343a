#!/usr/bin/env python3
"""Writes proxy/weft.order: the functions of the `dist` binary that start-up and serving
run, for the linker to lay out together.

Why: the kernel maps a binary's code in 64 KiB windows around each page it touches, so
start-up code scattered over 17 MB of text left 5 MiB of it resident in every proxy.
Packed together, the code a proxy runs fits in a fraction of that, and the request
path's hot functions share pages (see docs/benchmarks.md, "Resident memory").

How: runs the `dist` binary under callgrind (which records every function executed, by
symbol) through start-up, plain HTTP/1.1 and HTTP/2 forwarding, a filter chain (and with
WEFT_TRAIN_TLS=1 TLS on a listener and towards a cluster), the admin endpoints and a
graceful shutdown, in front of small Python backends; keeps the
symbols of the binary itself in four groups: what serving runs, what serving runs only
with a filter, then the same two for start-up, each by instructions executed. Then
rebuild:

    python3 benches/orderfile.py && cargo build --profile dist -p weft

proxy/build.rs hands the file to the linker (lld's --symbol-ordering-file). Symbols the
file names that a later build no longer has are skipped, new ones go after the listed
ones: the file ages gracefully, and this script renews it. It holds the lists of two
builds, each under a header naming it: the plain `dist` one and the profile-guided one
(benches/pgo.py, which runs this script on its binary with WEFT_ORDER_BUILD=profile-guided):
a run replaces the list of the build it profiles and keeps the other's. WEFT_TRAIN_TLS=1
adds TLS to the training (what `benches/pgo.py --tls` sets).
Needs valgrind and curl (and openssl for TLS); WEFT=PATH profiles another build of the
same code (a copy of the `dist` binary, or the profile-guided one).
"""
import collections
import http.server
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.environ["HOME"], ".cache", "weft-target"))
WEFT = os.environ.get("WEFT", os.path.join(TARGET, "dist", "weft"))
FILTER = os.path.join(TARGET, "wasm32-wasip2", "release", "bench_filter.wasm")
OUT = os.path.join(ROOT, "proxy", "weft.order")
# Which build's list this run writes: `dist`, or `profile-guided` from benches/pgo.py.
BUILD = os.environ.get("WEFT_ORDER_BUILD", "dist")
REQUESTS = 2000


class Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        # The headers nginx sends (the benchmarks' backend): `Connection: keep-alive`
        # takes the proxy through its hop-by-hop removal.
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "keep-alive")
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the proxy gave up the request of a client that went away

    def log_message(self, *args):
        pass


def start_backend(tls=None):
    """A training backend on a free port, served from a thread until shut down; behind
    TLS when given an `ssl.SSLContext`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Backends:
    """The training's backends: one in clear text and, with `tls`, one behind TLS with
    the certificates of that side (a CA made for the run and a leaf it signed for
    127.0.0.1, which the proxy's TLS listener presents too). TLS in the training makes
    the profile-guided build spend 5-14% less user time per TLS request, and its proxy
    without filters 1 MiB more memory (docs/benchmarks.md, "The sixteenth run"): a
    choice for `benches/pgo.py --tls`, not the default."""

    def __init__(self, tmp, tls=False):
        self.plain, self.tls = start_backend(), None
        self.ca = self.cert = self.key = None
        if tls:
            self.ca, self.cert, self.key = make_certs(tmp)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert, self.key)
            self.tls = start_backend(context)

    def shutdown(self):
        for server in (self.plain, self.tls):
            if server is not None:
                server.shutdown()


def make_certs(tmp):
    """(ca, cert, key) PEM paths in `tmp`, made with the openssl command."""
    ca, ca_key = os.path.join(tmp, "ca.pem"), os.path.join(tmp, "ca.key")
    cert, key, csr = (os.path.join(tmp, n) for n in ("leaf.pem", "leaf.key", "leaf.csr"))
    ext = os.path.join(tmp, "leaf.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for argv in (["req", "-x509"] + ec + ["-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=weft training CA"],
                 ["req"] + ec + ["-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
                 ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
                  "-days", "2", "-extfile", ext]):
        subprocess.run(["openssl"] + argv, check=True, capture_output=True)
    return ca, cert, key


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(admin, proc):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"weft exited during start-up ({proc.returncode})")
        if subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://{admin}/ready"]).returncode == 0:
            return
        time.sleep(0.2)
    sys.exit("weft did not become ready under callgrind")


def drive(proxy, requests=REQUESTS):
    """The paths a deployed proxy runs: keep-alive HTTP/1.1 from many connections,
    HTTP/2 prior knowledge, TLS with both (when the proxy has a TLS listener), clients
    that reset or send garbage, the admin endpoints."""
    url = f"http://{proxy.listen}/"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    clients = [subprocess.Popen(["curl", "-s", "-H", "x-bench-in: 1"] + [url] * (requests // 20), **quiet)
               for _ in range(20)]
    for c in clients:
        c.wait()
    subprocess.run(["curl", "-s", "--http2-prior-knowledge"] + [url] * (requests // 100), **quiet)
    if proxy.tls_listen:
        tls = ["curl", "-s", "--cacert", proxy.ca, "-H", "x-bench-in: 1"]
        tls_url = f"https://{proxy.tls_listen}/"
        clients = [subprocess.Popen(tls + [version] + [tls_url] * (requests // 20), **quiet)
                   for version in ("--http1.1", "--http2") for _ in range(2)]
        for c in clients:
            c.wait()
    # Clients that go away: mid-request with a reset (as a load generator's connections
    # end), and ones that send what is not HTTP.
    host, port = proxy.listen.rsplit(":", 1)
    for payload in (b"GET / HTTP/1.1\r\nHost: weft\r\n\r\n", b"NOT HTTP\r\n\r\n"):
        for _ in range(5):
            with socket.create_connection((host, int(port))) as s:
                s.sendall(payload)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            time.sleep(0.05)
    for path in ("metrics", "config", "live"):
        subprocess.run(["curl", "-s", f"http://{proxy.admin}/{path}"], **quiet)


# One training proxy: its command line after `weft --log warn`, where it listens, its admin
# address, its TLS listener (or None) and the CA that signed that listener's certificate.
Proxy = collections.namedtuple("Proxy", "command listen admin tls_listen ca")


def proxy_args(backends, with_filter, tmp):
    """One training proxy: `weft proxy` without a filter, or `weft run` with a config
    file: a listener with the bench filter and, when the backends have TLS, one with
    TLS (towards its cluster too) without filters, so that TLS traffic weighs on the
    request path rather than on the filter phases (under valgrind, which cannot
    reserve the default instance pool, the config asks for a small one)."""
    listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    backend = f"127.0.0.1:{backends.plain.server_address[1]}"
    if not with_filter:
        command = ["proxy", "--listen", listen, "--admin", admin, "--to", f"http://{backend}"]
        return Proxy(command, listen, admin, None, None)
    tls_listen, tls = None, ""
    if backends.tls is not None:
        tls_listen = f"127.0.0.1:{free_port()}"
        tls = f"""[[listeners]]
name = "tls"
address = "{tls_listen}"
cluster = "backend-tls"
[[listeners.tls.certificates]]
cert = "{backends.cert}"
key = "{backends.key}"
[[clusters]]
name = "backend-tls"
endpoints = ["127.0.0.1:{backends.tls.server_address[1]}"]
[clusters.tls]
ca = "{backends.ca}"
"""
    config = os.path.join(tmp, "weft.toml")
    with open(config, "w") as f:
        f.write(f"""[admin]
address = "{admin}"
[runtime]
workers = 1
filter_instances = 8
[[listeners]]
name = "main"
address = "{listen}"
cluster = "backend"
chain = "main"
[[clusters]]
name = "backend"
endpoints = ["{backend}"]
[[filters]]
name = "bench"
module = "{FILTER}"
[[chains]]
name = "main"
filters = ["bench"]
""" + tls)
    return Proxy(["run", "--config", config], listen, admin, tls_listen, backends.ca)


def profile(backends, with_filter, tmp, out):
    """One proxy under callgrind, driven through the paths a deployed proxy runs."""
    proxy = proxy_args(backends, with_filter, tmp)
    argv = ["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={out}",
            WEFT, "--log", "warn"] + proxy.command
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(proxy.admin, proc)
        # Start-up's counts go to `out.1`; what serving runs, to `out` at exit.
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        drive(proxy)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def callgrind_costs(path):
    """(object, function, position, cost) for each self cost in a callgrind output
    file (the inclusive cost of a call, on the line after `calls=`, is skipped). The
    position is an instruction address with `--dump-instr=yes`, else a source line."""
    names = {}
    ob = fn = None
    columns, pos = 1, 0
    callee_cost_next = False
    for line in open(path):
        head = line[:1]
        if head.isdigit() or head in "+-*":
            parts = line.split()
            # Positions are absolute, relative to the previous line's (`+N`, `-N`), or
            # the same (`*`).
            p = parts[0]
            if p.startswith("0x"):
                pos = int(p, 16)
            elif p[0] in "+-":
                pos += int(p)
            elif p != "*":
                pos = int(p)
            if callee_cost_next:
                callee_cost_next = False
            elif len(parts) > columns:
                yield ob, fn, pos, int(parts[columns])
            continue
        if line.startswith("positions:"):
            columns = len(line.split()) - 1
            continue
        if line.startswith("calls="):
            callee_cost_next = True
            continue
        # Names are compressed: `(id) name` defines an id, `(id)` refers to it;
        # `cob=`/`cfn=` share the namespaces of `ob=`/`fn=`.
        m = re.match(r"c?(ob|fn)=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
        if not m:
            continue
        kind, key, name = m.groups()
        if name is not None:
            names[(kind, key)] = name
        if not line.startswith("c"):
            if kind == "ob":
                ob = names.get((kind, key))
            else:
                fn = names.get((kind, key))


def executed(path, binary):
    """Instructions executed in each function of `binary` (self cost), from a
    callgrind output file."""
    cost = collections.Counter()
    for ob, fn, _, c in callgrind_costs(path):
        if ob == binary and fn is not None:
            cost[fn] += c
    return cost


def symbol_sizes(binary):
    """The size of each symbol `binary` defines, by name."""
    sizes = {}
    for line in subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        fields = line.split()
        if len(fields) == 4:
            sizes[fields[3]] = int(fields[1], 16)
    return sizes


def lists():
    """The file's function lists: (build, names) for each, in order. A `#` line naming
    the build starts each (lld skips such lines, as names no binary has)."""
    if not os.path.exists(OUT):
        return []
    found = []
    for line in open(OUT):
        line = line.strip()
        if line.startswith("#"):
            found.append((line[1:].split(":", 1)[0].strip(), []))
        elif line and found:
            found[-1][1].append(line)
    return [(build, names) for build, names in found if names]


def coverage(binary):
    """How many of the functions proxy/weft.order lists for `binary`'s build it has:
    (found, listed). Few found means the layout is stale (or `binary` is another
    build, such as `release`)."""
    written, sizes = [names for _, names in lists()], symbol_sizes(binary)
    if not written:
        return 0, 0
    names = max(written, key=lambda names: sum(f in sizes for f in names))
    return sum(f in sizes for f in names), len(names)


def main():
    for need, what in ((WEFT, "cargo build --profile dist -p weft"),
                       (FILTER, "cargo build --release --target wasm32-wasip2 -p bench-filter")):
        if not os.path.exists(need):
            sys.exit(f"{need} is missing: run `{what}` first")
    binary = os.path.realpath(WEFT)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        backends = Backends(tmp, tls=os.environ.get("WEFT_TRAIN_TLS") == "1")
        for with_filter in (False, True):
            out = os.path.join(tmp, f"callgrind-{with_filter}.out")
            profile(backends, with_filter, tmp, out)
            runs[with_filter] = (executed(out + ".1", binary), executed(out, binary))
        backends.shutdown()
    sizes = symbol_sizes(WEFT)
    # Request path first, most executed first, so that its code shares the fewest pages
    # (and TLB entries), then start-up; a proxy without filters runs neither of the
    # filter groups, so they sit apart from its code and it maps none of the Wasm host.
    (plain_start, plain_serve), (filter_start, filter_serve) = runs[False], runs[True]
    groups = (("serving", plain_serve), ("serving with a filter", filter_serve),
              ("start-up", plain_start), ("start-up with a filter", filter_start))
    ordered, seen = [], set()
    for name, executed_in in groups:
        added = [f for f, _ in executed_in.most_common() if f in sizes and f not in seen]
        ordered += added
        seen.update(added)
        print(f"{name}: {len(added)} functions, {sum(sizes[f] for f in added) // 1024} KiB")
    # One list per build: the plain `dist` build and the profile-guided one
    # (benches/pgo.py) name most symbols differently (cargo hashes an explicit
    # --target into them), and the linker skips what a binary does not have. This
    # build's list is replaced, the other's kept. (Told apart by name, not by how many
    # of a list's functions the binary has: a new dependency renames them all.)
    written = [(b, names) for b, names in lists() if b != BUILD] + [(BUILD, ordered)]
    with open(OUT, "w") as f:
        for build, names in written:
            f.write(f"# {build}: the functions this build of weft runs (benches/orderfile.py)\n")
            f.write("\n".join(names) + "\n")
    print(f"{OUT}: {len(ordered)} functions, {len(written)} lists")


if __name__ == "__main__":
    main()
