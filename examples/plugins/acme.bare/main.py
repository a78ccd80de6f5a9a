"""acme.bare: aurora-plugin-protocol-v1 spoken by hand (docs/plugin-protocol-v1.md).

No SDK and no Aurora code: Content-Length framing, JSON-RPC 2.0, the hello
handshake, then answers to aurora.call and aurora.health, one at a time.
"""

import json
import os
import socket
import sys


def send(sock: socket.socket, message: dict) -> None:
    body = json.dumps(message).encode("utf-8")
    sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)


def messages(sock: socket.socket):
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
        header, _, buffer = buffer.partition(b"\r\n\r\n")
        length = 0
        for line in header.decode("ascii").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(buffer) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
        body, buffer = buffer[:length], buffer[length:]
        yield json.loads(body)


def main() -> int:
    fd = os.environ.get("AURORA_PLUGIN_PROTOCOL_FD")
    if fd is None:
        print("acme.bare: not started by the Aurora launcher", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=int(fd))
    hello = {"protocols": ["aurora-plugin-protocol-v1"], "functions": ["add"], "health": True}
    send(sock, {"jsonrpc": "2.0", "id": 1, "method": "aurora.hello", "params": hello})
    for msg in messages(sock):
        method, msg_id = msg.get("method"), msg.get("id")
        if method is None or msg_id is None:
            continue  # the hello answer, aurora.cancel: nothing to do one call at a time
        if method == "aurora.call" and msg["params"]["function"] == "add":
            args = msg["params"]["args"]
            send(sock, {"jsonrpc": "2.0", "id": msg_id, "result": {"value": args["a"] + args["b"]}})
        elif method == "aurora.health":
            send(
                sock,
                {
                    "jsonrpc": "2.0",
                    "id": msg_id,
                    "result": {"status": "serving", "message": "adding"},
                },
            )
        else:
            send(
                sock,
                {
                    "jsonrpc": "2.0",
                    "id": msg_id,
                    "error": {"code": -32601, "message": f"unknown {method}"},
                },
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
