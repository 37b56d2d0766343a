"""A gRPC client for the end-to-end tests, with no generated code.

    grpc_client.py [--ca FILE --name NAME] [--deadline SECONDS] TARGET unary MESSAGE
    grpc_client.py [--ca FILE --name NAME] [--deadline SECONDS] TARGET bidi MESSAGE...

Calls `weft.test.Echo` (see grpc_server.py) and prints one JSON object: the
status code name, its details, the replies and the metadata. In clear text, or
with --ca under TLS, trusting that PEM CA and asking for NAME (SNI and the name
the certificate must have). Calls carry a deadline (`grpc-timeout`) of
--deadline seconds, 10 by default.

`bidi` is interleaved: each message is sent only after the reply to the one
before has arrived (all `<n>` replies to `ticks:<n>:<ms>`, the client staying
silent meanwhile), so it only works if both directions stream.
"""

import argparse
import json
import queue
import sys

import grpc


def unary(channel, message, deadline):
    call = channel.unary_unary("/weft.test.Echo/Unary")
    try:
        reply, c = call.with_call(message.encode(), timeout=deadline)
        return {
            "code": c.code().name,
            "reply": reply.decode(),
            "initial": dict(c.initial_metadata()),
            "trailing": dict(c.trailing_metadata()),
        }
    except grpc.RpcError as e:
        return {
            "code": e.code().name,
            "details": e.details(),
            "trailing": dict(e.trailing_metadata() or ()),
        }


def bidi(channel, messages, deadline):
    outbox = queue.Queue()

    def requests():
        while True:
            m = outbox.get()
            if m is None:
                return
            yield m

    call = channel.stream_stream("/weft.test.Echo/Bidi")(requests(), timeout=deadline)
    replies = []
    try:
        for m in messages:
            outbox.put(m.encode())
            expected = int(m.split(":")[1]) if m.startswith("ticks:") else 1
            for _ in range(expected):
                replies.append(next(call).decode())
        outbox.put(None)
        replies.extend(r.decode() for r in call)
        return {"code": call.code().name, "replies": replies}
    except grpc.RpcError as e:
        outbox.put(None)
        return {"code": e.code().name, "details": e.details(), "replies": replies}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ca")
    parser.add_argument("--name")
    parser.add_argument("--deadline", type=float, default=10)
    parser.add_argument("target")
    parser.add_argument("mode", choices=("unary", "bidi"))
    parser.add_argument("messages", nargs="+")
    args = parser.parse_args()
    # Straight to the target even if the environment names an HTTP proxy.
    options = [("grpc.enable_http_proxy", 0)]
    if args.ca:
        with open(args.ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        options.append(("grpc.ssl_target_name_override", args.name))
        channel = grpc.secure_channel(args.target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(args.target, options=options)
    with channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        if args.mode == "unary":
            out = unary(channel, args.messages[0], args.deadline)
        else:
            out = bidi(channel, args.messages, args.deadline)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
