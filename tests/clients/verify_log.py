#!/usr/bin/env python3
"""Reads a one-partition topic written by failover_produce.py from the start and checks it
against the producer's outcome file: every acknowledged record is there exactly once, at the
offset its acknowledgement named; no record appears twice; records are in the order they were
sent (sequence numbers rise with offsets); nothing appears that was never sent."""

import argparse

import fjordtest as ft

ap = argparse.ArgumentParser()
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--acks", required=True, help="failover_produce.py's --out file")
a = ap.parse_args()

acked = {}
sent = None
for line in open(a.acks):
    f = line.split()
    if f and f[0] == "ACK":
        acked[int(f[1])] = int(f[2])
    elif f and f[0] == "DONE":
        sent = int(f[1])
ft.check(sent is not None, "the producer did not finish (no DONE line)")

read = ft.read_all("confluent", a.bootstrap, a.topic, 1)
offset_of = {}
last_seq = -1
for _, offset, _, value in read:
    seq = int(value.decode().split("-")[1])
    ft.check(seq < sent, f"offset {offset}: seq {seq} was never sent ({sent} sent)")
    ft.check(seq not in offset_of, f"seq {seq} at offsets {offset_of.get(seq)} and {offset}")
    ft.check(seq > last_seq, f"offset {offset}: seq {seq} after seq {last_seq}")
    offset_of[seq] = offset
    last_seq = seq
for seq, offset in acked.items():
    ft.check(seq in offset_of, f"acknowledged seq {seq} (offset {offset}) lost")
    ft.check(offset_of[seq] == offset, f"seq {seq} acknowledged at {offset}, read at {offset_of[seq]}")
extra = len(offset_of) - len(acked)
print(f"OK sent={sent} acked={len(acked)} read={len(read)} written_unacknowledged={extra}")
