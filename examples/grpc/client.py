#!/usr/bin/env python3
"""Calls the demo gRPC service through Weft.

  python3 client.py say NAME [TARGET]     unary call to demo.Echo/Say
  python3 client.py ticks N [TARGET]      streaming call to demo.Echo/Ticks (N seconds)

TARGET defaults to 127.0.0.1:8081, the example's listener. `--deadline SECONDS`
first gives the call a deadline (sent as `grpc-timeout`); `say` has one of 10 s
anyway, `ticks` none. Needs grpcio.
"""

import sys
import time

import grpc


def main():
    args = sys.argv[1:]
    deadline = None
    if args[:1] == ["--deadline"] and len(args) > 1:
        deadline, args = float(args[1]), args[2:]
    if len(args) < 2 or args[0] not in ("say", "ticks"):
        sys.exit(__doc__)
    what, arg = args[0], args[1].encode()
    target = args[2] if len(args) > 2 else "127.0.0.1:8081"
    with grpc.insecure_channel(target) as channel:
        try:
            if what == "say":
                print(channel.unary_unary("/demo.Echo/Say")(arg, timeout=deadline or 10).decode())
            else:
                start = time.monotonic()
                for msg in channel.unary_stream("/demo.Echo/Ticks")(arg, timeout=deadline):
                    print(f"{time.monotonic() - start:4.1f}s  {msg.decode()}", flush=True)
        except grpc.RpcError as e:
            sys.exit(f"{e.code().name}: {e.details()}")


if __name__ == "__main__":
    main()
