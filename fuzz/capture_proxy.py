#!/usr/bin/env python3
"""Records what Kafka clients send, for fuzz/corpus/kafka_request.

    capture_proxy.py LISTEN_PORT BROKER_PORT OUT_PREFIX

Forwards every connection on 127.0.0.1:LISTEN_PORT to 127.0.0.1:BROKER_PORT and writes the
client-to-broker bytes of connection N to OUT_PREFIX-N (size-prefixed Kafka frames, exactly
the kafka_request target's input format). Run the broker with advertised_port = LISTEN_PORT
so that clients reconnecting to the advertised address come through the proxy as well.
"""
import socket
import sys
import threading


def pump(src, dst, record):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if record is not None:
                record.write(data)
                record.flush()
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main():
    listen_port, broker_port, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen()
    n = 0
    while True:
        client, _ = server.accept()
        broker = socket.create_connection(("127.0.0.1", broker_port))
        record = open(f"{prefix}-{n}", "wb")
        n += 1
        threading.Thread(target=pump, args=(client, broker, record), daemon=True).start()
        threading.Thread(target=pump, args=(broker, client, None), daemon=True).start()


if __name__ == "__main__":
    main()
