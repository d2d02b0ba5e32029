#!/usr/bin/env python3
"""Committed offsets resumed: each step is a new consumer in the same group that checks the
committed offset (OffsetFetch) left by the previous step, reads on from exactly there, and
commits where it stops. The caller restarts the broker between steps to test resumption
after a broker restart.

  --step first   produce --count records to a one-partition topic, read --take, commit
  --step next    check the commit, read --take more (or the rest with --take 0), commit
"""

import argparse
import json
import os

import fjordtest as ft

ap = argparse.ArgumentParser()
ap.add_argument("--client", choices=ft.CLIENTS, required=True)
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--state", required=True, help="a JSON file carried between steps")
ap.add_argument("--step", choices=("first", "next"), required=True)
ap.add_argument("--count", type=int, default=100)
ap.add_argument("--take", type=int, default=30)
ap.add_argument("--group", help="default: resume-TOPIC")
a = ap.parse_args()
group = a.group or f"resume-{a.topic}"

if a.step == "first":
    recs = [(None, f"v{i}".encode()) for i in range(a.count)]
    acks = ft.produce(a.client, a.bootstrap, a.topic, recs, partition=0)
    state = {"offsets": [o for _, o in acks], "next": 0, "committed": -1}
else:
    with open(a.state) as f:
        state = json.load(f)
offsets = state["offsets"]
got = ft.committed(a.client, a.bootstrap, group, a.topic, 1)[0]
ft.check(got == state["committed"], f"committed offset {got}, expected {state['committed']}")

take = a.take if a.take > 0 else len(offsets) - state["next"]
want = list(range(state["next"], state["next"] + take))
read = []
if a.client == "kafka-python":
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=a.bootstrap.split(","),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=7,
    )
    # kafka-python 3.0.12 loses an assignment when a poll's timeout expires while a rejoin
    # triggered by fresh metadata is in flight: learn the topic first, poll long enough.
    ft.check(c.partitions_for_topic(a.topic) == {0}, "topic metadata")
    c.subscribe([a.topic])
    tp = TopicPartition(a.topic, 0)

    def poll():
        for msgs in c.poll(timeout_ms=1000).values():
            for m in msgs:
                if len(read) < take:
                    read.append((m.offset, m.value))
        return len(read) >= take

    ft.wait_until(f"{take} records", 60, poll, step=0)
    last = read[-1][0] + 1
    from kafka.structs import OffsetAndMetadata

    c.commit({tp: OffsetAndMetadata(last, "", -1)})
    c.close(autocommit=False)
else:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        ft.rdkafka({
            "bootstrap.servers": a.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        })
    )
    c.subscribe([a.topic])

    def poll():
        for m in c.consume(num_messages=7, timeout=0.2):
            ft.check(not m.error(), f"consume error: {m.error() if m.error() else ''}")
            if len(read) < take:
                read.append((m.offset(), m.value()))
        return len(read) >= take

    ft.wait_until(f"{take} records", 60, poll, step=0)
    last = read[-1][0] + 1
    c.commit(offsets=[TopicPartition(a.topic, 0, last)], asynchronous=False)
    c.close()

for (o, v), i in zip(read, want):
    ft.check(o == offsets[i] and v == f"v{i}".encode(), f"read {v}@{o}, expected v{i}@{offsets[i]}")
state["next"] += take
state["committed"] = last
got = ft.committed(a.client, a.bootstrap, group, a.topic, 1)[0]
ft.check(got == last, f"after commit: committed offset {got}, expected {last}")
tmp = a.state + ".tmp"
with open(tmp, "w") as f:
    json.dump(state, f)
os.replace(tmp, a.state)
print(f"OK step={a.step} read v{want[0]}..v{want[-1]} committed={last}")
