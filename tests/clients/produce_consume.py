#!/usr/bin/env python3
"""Keyed produce with acks=all (optionally idempotent), then the topic read back: every record
once, at the offset its acknowledgement named, with its key and value; a key in one partition;
per partition, offsets rising and each key's values in the order they were sent."""

import argparse

import fjordtest as ft

ap = argparse.ArgumentParser()
ap.add_argument("--client", choices=ft.CLIENTS, required=True)
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--partitions", type=int, required=True)
ap.add_argument("--count", type=int, default=1000)
ap.add_argument("--keys", type=int, default=17)
ap.add_argument("--idempotent", action="store_true")
a = ap.parse_args()

records = [(f"key-{i % a.keys}".encode(), f"value-{i}".encode()) for i in range(a.count)]
acks = ft.produce(a.client, a.bootstrap, a.topic, records, idempotent=a.idempotent)
ft.check(len(set(acks)) == a.count, f"{a.count - len(set(acks))} acknowledgements repeat an offset")
expected = {ack: rec for ack, rec in zip(acks, records)}

read = ft.read_all(a.client, a.bootstrap, a.topic, a.partitions)
ft.check(len(read) == a.count, f"read {len(read)} records, produced {a.count}")
key_partition = {}
last_offset = {}
last_value = {}
for p, o, k, v in read:
    ft.check((p, o) in expected, f"record at {p}/{o} was never acknowledged there")
    ft.check(expected[(p, o)] == (k, v), f"{p}/{o}: read {(k, v)}, sent {expected[(p, o)]}")
    ft.check(key_partition.setdefault(k, p) == p, f"key {k} in partitions {key_partition[k]} and {p}")
    ft.check(last_offset.get(p, -1) < o, f"partition {p}: offset {o} after {last_offset.get(p)}")
    last_offset[p] = o
    n = int(v.split(b"-")[1])
    ft.check(last_value.get(k, -1) < n, f"key {k}: value {n} after {last_value.get(k)}")
    last_value[k] = n
used = len(last_offset)
ft.check(used > 1 or a.partitions == 1, f"{a.keys} keys all in one partition")
print(f"OK produced={a.count} read={len(read)} partitions_used={used}")
