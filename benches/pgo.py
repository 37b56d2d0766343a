#!/usr/bin/env python3
"""Builds the `dist` binary with profile-guided optimisation: the shipping build.

Why: W0 executed about as many instructions per request as a bare hyper proxy on
hyper-util's pooled client (36.7k against 35.3k, callgrind; on hyper's connection API,
benches/bare-hyper, the fixture is at 22.7k and W0 now at 30.4k) but missed the L1
instruction cache 49% more often: the
request path's code sits inside large async state machines, its hot blocks interleaved
with error handling that never runs. With a profile, LLVM lays out each function's hot
blocks together, moves cold ones out of the way, and inlines where the calls are hot:
W0 then executed 24% fewer instructions and missed the instruction cache 59% less
(docs/benchmarks.md, "Profile-guided build").

How, in four steps (35-45 minutes on 2 cores: two builds of the workspace, the second
always whole since rustc counts the profile among every crate's inputs, and a relink):
  1. builds `weft` with instrumentation (`-Cprofile-generate`) into its own target
     directory, so the cached `release` and `dist` builds are left as they are;
  2. runs it through the training of benches/orderfile.py (start-up, keep-alive
     HTTP/1.1 from 20 connections, HTTP/2, clients that reset or send garbage, the
     admin endpoints, a graceful shutdown; with `--tls`, TLS on a listener and towards
     a cluster too), once without a filter and once with the bench filter, with more
     requests than under callgrind, and merges the counts;
  3. builds `weft` again with the profile (`-Cprofile-use`);
  4. writes this build's function order (benches/orderfile.py, needs valgrind) and
     links again with it, as the plain `dist` build is (see proxy/build.rs).

    python3 benches/pgo.py [--tls]
    WEFT=$HOME/.cache/weft-target/pgo-use/x86_64-unknown-linux-gnu/dist/weft python3 benches/run.py ...

Needs curl, the bench filter (.ci/build-filters) and rustup's llvm-tools component
(for llvm-profdata; installed here if missing). The profile is made afresh from this
checkout's code each time, so it never ages.
"""
import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import orderfile

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = orderfile.TARGET
GENERATE = os.path.join(TARGET, "pgo-generate")
USE = os.path.join(TARGET, "pgo-use")
RAW = os.path.join(GENERATE, "profraw")
PROFILE = os.path.join(GENERATE, "weft.profdata")
REQUESTS = 20000


def host():
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("host:"))


def llvm_profdata():
    """rustup's llvm-profdata, which reads the profile format of this rustc's LLVM."""
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True,
                             check=True).stdout.strip()
    tool = os.path.join(sysroot, "lib", "rustlib", host(), "bin", "llvm-profdata")
    if not os.path.exists(tool):
        subprocess.run(["rustup", "component", "add", "llvm-tools"], check=True)
    return tool


def build(target_dir, rustflags):
    # An explicit --target keeps RUSTFLAGS off build scripts and proc macros.
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir, RUSTFLAGS=rustflags)
    subprocess.run(["cargo", "build", "--profile", "dist", "-p", "weft", "--target", host()],
                   cwd=orderfile.ROOT, env=env, check=True)
    return os.path.join(target_dir, host(), "dist", "weft")


def train(binary, tls):
    """Runs the instrumented binary through the training; each process writes its
    counts to RAW when it exits."""
    with tempfile.TemporaryDirectory() as tmp:
        backends = orderfile.Backends(tmp, tls)
        try:
            for with_filter in (False, True):
                proxy = orderfile.proxy_args(backends, with_filter, tmp)
                # One file per run (the compiled-in name would merge them into one).
                env = dict(os.environ, LLVM_PROFILE_FILE=os.path.join(RAW, f"filter-{with_filter}-%p.profraw"))
                proc = subprocess.Popen([binary, "--log", "warn"] + proxy.command, stdout=subprocess.DEVNULL, env=env)
                try:
                    orderfile.wait_ready(proxy.admin, proc)
                    orderfile.drive(proxy, REQUESTS)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    if proc.wait(timeout=60) != 0:
                        sys.exit(f"the instrumented weft exited with {proc.returncode}")
        finally:
            backends.shutdown()


def main():
    ap = argparse.ArgumentParser(description="Builds the profile-guided `dist` binary.")
    ap.add_argument("--tls", action="store_true",
                    help="train with TLS too: 5-14%% less user time per TLS request; a proxy without TLS then takes 1 MiB more memory")
    tls = ap.parse_args().tls
    if not os.path.exists(orderfile.FILTER):
        sys.exit(f"{orderfile.FILTER} is missing: run .ci/build-filters first")
    # Checked now rather than after half an hour of building: the last step needs them.
    for tool in ("valgrind", "callgrind_control", "curl") + (("openssl",) if tls else ()):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (apt-get install valgrind curl openssl)")
    profdata = llvm_profdata()
    shutil.rmtree(RAW, ignore_errors=True)
    os.makedirs(RAW)
    instrumented = build(GENERATE, f"-Cprofile-generate={RAW}")
    train(instrumented, tls)
    raw = glob.glob(os.path.join(RAW, "*.profraw"))
    if len(raw) != 2:
        sys.exit(f"expected a profile from each of the 2 training runs, found {len(raw)} in {RAW}")
    subprocess.run([profdata, "merge", "-o", PROFILE] + raw, check=True)
    binary = build(USE, f"-Cprofile-use={PROFILE}")
    # This build names most functions differently from the plain `dist` one, so it has
    # its own list in proxy/weft.order: written from this binary, then linked with.
    env = dict(os.environ, WEFT=binary, CARGO_TARGET_DIR=TARGET, WEFT_ORDER_BUILD="profile-guided",
               WEFT_TRAIN_TLS="1" if tls else "0")
    subprocess.run([sys.executable, os.path.join(HERE, "orderfile.py")], env=env, check=True)
    binary = build(USE, f"-Cprofile-use={PROFILE}")
    print(f"profile-guided dist build: {binary}")


if __name__ == "__main__":
    main()
