#!/usr/bin/env python3
"""A confluent-kafka idempotent producer (acks=all) sending numbered records to one partition
until --stop-file appears (or --max-seconds pass), while the caller kills or stops brokers.

Writes one line per outcome to --out, flushed at once: `ACK seq offset`, `ERR seq error`,
`FATAL error`; and at the end `DONE sent acked errors`. It never fails by itself: the caller
judges the file (and verify_log.py the partition)."""

import argparse
import os
import time

import fjordtest as ft

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--stop-file", required=True)
ap.add_argument("--max-seconds", type=float, default=120)
ap.add_argument("--rate", type=float, default=300, help="records per second")
a = ap.parse_args()

from confluent_kafka import Producer  # noqa: E402

out = open(a.out, "a", buffering=1)
counts = {"acked": 0, "errors": 0}


def on_error(err):
    # Transient errors (a broker down) are retried by librdkafka; only fatal ones are final.
    if err.fatal():
        out.write(f"FATAL {err}\n")
    else:
        ft.log(f"client error (retried): {err}")


p = Producer(
    ft.rdkafka(
        {
            "bootstrap.servers": a.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 60000,
            "retry.backoff.ms": 100,
            "reconnect.backoff.max.ms": 1000,
            "error_cb": on_error,
        }
    )
)


def report(seq):
    def cb(err, msg):
        if err is None:
            counts["acked"] += 1
            out.write(f"ACK {seq} {msg.offset()}\n")
        else:
            counts["errors"] += 1
            out.write(f"ERR {seq} {err}\n")

    return cb


start = time.monotonic()
seq = 0
interval = 1.0 / a.rate
while not os.path.exists(a.stop_file) and time.monotonic() - start < a.max_seconds:
    due = start + seq * interval
    now = time.monotonic()
    if now < due:
        p.poll(due - now)
        continue
    try:
        p.produce(a.topic, value=f"seq-{seq:08d}".encode(), partition=0, on_delivery=report(seq))
        seq += 1
    except BufferError:
        p.poll(0.05)
    p.poll(0)
left = p.flush(90)
out.write(f"DONE {seq} {counts['acked']} {counts['errors']} {left}\n")
out.close()
print(f"DONE sent={seq} acked={counts['acked']} errors={counts['errors']} unflushed={left}")
