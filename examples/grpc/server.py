#!/usr/bin/env python3
"""A demo gRPC upstream for the Weft gRPC example, with no generated code: messages are
raw UTF-8 bytes (a real service would use protobuf; the proxy does not care).

  demo.Echo/Say    unary: answers "hello, <request>"
  demo.Echo/Ticks  server streaming: one "tick N" per second, N = 1..<request>

Usage: python3 server.py [PORT]   (listens on 127.0.0.1:PORT, default 50051; needs grpcio)
"""

import sys
import time
from concurrent import futures

import grpc


def say(request, context):
    return b"hello, " + request


def ticks(request, context):
    for n in range(1, int(request or b"3") + 1):
        time.sleep(1)
        yield f"tick {n}".encode()


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 50051
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"demo.Echo listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
