#!/usr/bin/env python3
"""A consumer group of several members splitting a topic's partitions; records produced while
it is stable are read exactly once, by the owner of their partition; when one member leaves,
the others take over all its partitions and read what comes next exactly once; the committed
offsets end at the log end."""

import argparse

import fjordtest as ft

ap = argparse.ArgumentParser()
ap.add_argument("--client", choices=ft.CLIENTS, required=True)
ap.add_argument("--bootstrap", required=True)
ap.add_argument("--topic", required=True)
ap.add_argument("--partitions", type=int, required=True)
ap.add_argument("--members", type=int, default=3)
ap.add_argument("--count", type=int, default=300)
a = ap.parse_args()
group = f"group-{a.topic}"
everything = set(range(a.partitions))


def settled(members):
    """The assignments once every member owns some partitions, none twice, all covered."""
    parts = [m.assignment() for m in members]
    if any(not p for p in parts) or sum(len(p) for p in parts) != a.partitions:
        return None
    return parts if set().union(*parts) == everything else None


def batch(lo, hi):
    recs = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(lo, hi)]
    acks = ft.produce(a.client, a.bootstrap, a.topic, recs)
    return {ack: rec[1] for ack, rec in zip(acks, recs)}


def check_read(members, parts, sent, before):
    total = len(sent)
    ft.wait_until(
        f"{total} records read",
        30,
        lambda: sum(len(m.read()) - before[m.name] for m in members) >= total,
    )
    seen = {}
    for m, owned in zip(members, parts):
        for p, o, v in m.read()[before[m.name] :]:
            ft.check(p in owned, f"{m.name} read partition {p}, owns {sorted(owned)}")
            ft.check((p, o) not in seen, f"{p}/{o} read by {seen.get((p, o))} and {m.name}")
            ft.check(sent.get((p, o)) == v, f"{p}/{o}: read {v}, sent {sent.get((p, o))}")
            seen[(p, o)] = m.name
    ft.check(len(seen) == total, f"read {len(seen)} of {total}")


members = [ft.Member(a.client, a.bootstrap, group, a.topic, f"m{i}") for i in range(a.members)]
for m in members:
    m.start()
parts = ft.wait_until(f"{a.members} members share {a.partitions} partitions", 60, lambda: settled(members))
ft.log("assigned:", [sorted(p) for p in parts])
before = {m.name: len(m.read()) for m in members}
sent = batch(0, a.count)
check_read(members, parts, sent, before)

leaving, staying = members[-1], members[:-1]
leaving.stop()
parts = ft.wait_until(
    f"{len(staying)} members take over {sorted(parts[-1])}", 60, lambda: settled(staying)
)
ft.log("after one left:", [sorted(p) for p in parts])
before = {m.name: len(m.read()) for m in staying}
sent2 = batch(a.count, 2 * a.count)
check_read(staying, parts, sent2, before)
for m in staying:
    m.stop()

ends = {}
for (p, o) in list(sent) + list(sent2):
    ends[p] = max(ends.get(p, -1), o + 1)
got = ft.committed(a.client, a.bootstrap, group, a.topic, a.partitions)
for p, end in ends.items():
    ft.check(got.get(p) == end, f"partition {p}: committed {got.get(p)}, log end {end}")
print(f"OK members={a.members} read={2 * a.count} committed={got}")
