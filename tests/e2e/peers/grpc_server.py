"""A gRPC server for the end-to-end tests, with no generated code.

    grpc_server.py [--cert FILE --key FILE]

Serves `weft.test.Echo` with raw-bytes messages on 127.0.0.1, on a port the
kernel chooses, and prints that port on stdout once it is serving; in clear
text, or under TLS with the given PEM certificate chain and key.

- `Unary`: answers `echo:<request>`; sends the `x-forwarded-for` it received and
  the seconds left of the call's deadline (`x-seen-time-remaining`, empty for
  none) as initial metadata, and `x-echo-trailer` as trailing metadata. A request
  `abort:<CODE>:<message>` ends the call with that status instead; a request
  `sleep:<ms>` is answered that much later.
- `Bidi`: answers every message with `echo:<message>` as it arrives; a message
  `abort:<CODE>:<message>` ends the call with that status, one `sleep:<ms>` is
  answered that much later, and one `ticks:<n>:<ms>` with `tick:1` to `tick:<n>`,
  one every `<ms>`; `exit:<ms>` ends the whole server that much later, dropping its
  connections as a crashed server does.
"""

import argparse
import os
import sys
import time
from concurrent import futures

import grpc


def _abort_if_asked(request, context):
    if request.startswith(b"abort:"):
        _, code, message = request.decode().split(":", 2)
        context.abort(getattr(grpc.StatusCode, code), message)


def unary(request, context):
    _abort_if_asked(request, context)
    if request.startswith(b"sleep:"):
        time.sleep(int(request[len(b"sleep:") :]) / 1000)
    received = dict(context.invocation_metadata())
    remaining = context.time_remaining()
    context.send_initial_metadata(
        (
            ("x-seen-forwarded-for", received.get("x-forwarded-for", "")),
            ("x-seen-time-remaining", "" if remaining is None else f"{remaining:.3f}"),
        )
    )
    context.set_trailing_metadata((("x-echo-trailer", "t-" + request.decode()),))
    return b"echo:" + request


def bidi(requests, context):
    for request in requests:
        _abort_if_asked(request, context)
        if request.startswith(b"sleep:"):
            time.sleep(int(request[len(b"sleep:") :]) / 1000)
        if request.startswith(b"ticks:"):
            _, n, ms = request.decode().split(":")
            for i in range(1, int(n) + 1):
                time.sleep(int(ms) / 1000)
                yield f"tick:{i}".encode()
            continue
        if request.startswith(b"exit:"):
            time.sleep(int(request[len(b"exit:") :]) / 1000)
            os._exit(1)
        yield b"echo:" + request


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    handler = grpc.method_handlers_generic_handler(
        "weft.test.Echo",
        {
            # No (de)serializers: messages are bytes.
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    if args.cert:
        with open(args.cert, "rb") as c, open(args.key, "rb") as k:
            credentials = grpc.ssl_server_credentials(((k.read(), c.read()),))
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    # Stop when the test closes our stdin (or kills us).
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
