#!/usr/bin/env python3
"""Calls the demo gRPC service through Weft.

  python3 client.py say NAME [TARGET]     unary call to demo.Echo/Say
  python3 client.py ticks N [TARGET]      streaming call to demo.Echo/Ticks (N seconds)

TARGET defaults to 127.0.0.1:8081, the example's listener. Needs grpcio.
"""

import sys
import time

import grpc


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("say", "ticks"):
        sys.exit(__doc__)
    what, arg = sys.argv[1], sys.argv[2].encode()
    target = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1:8081"
    with grpc.insecure_channel(target) as channel:
        try:
            if what == "say":
                print(channel.unary_unary("/demo.Echo/Say")(arg, timeout=10).decode())
            else:
                start = time.monotonic()
                for msg in channel.unary_stream("/demo.Echo/Ticks")(arg):
                    print(f"{time.monotonic() - start:4.1f}s  {msg.decode()}", flush=True)
        except grpc.RpcError as e:
            sys.exit(f"{e.code().name}: {e.details()}")


if __name__ == "__main__":
    main()
