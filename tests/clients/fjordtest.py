"""Helpers shared by the client scripts: one interface over kafka-python and confluent-kafka
(produce and wait for acknowledgements, read a topic to its end, a consumer-group member in a
thread), and checks that exit non-zero with a message.

Every wait is bounded; a script never runs past its caller's time limit by design.
"""

import logging
import os
import sys
import threading
import time

# The clients' own warnings (connection errors, retries) go to stderr, shown on failure.
logging.basicConfig(
    level=os.environ.get("FJORDTEST_LOG", "WARNING"),
    format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
)

CLIENTS = ("kafka-python", "confluent")


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def wait_until(what, limit, f, step=0.1):
    """Polls f() until it returns a true value (returned), or fails after limit seconds."""
    deadline = time.monotonic() + limit
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            fail(f"timed out after {limit}s: {what}")
        time.sleep(step)


def rdkafka(conf):
    """confluent-kafka settings, with librdkafka's debug contexts from FJORDTEST_RDKAFKA_DEBUG."""
    if os.environ.get("FJORDTEST_RDKAFKA_DEBUG"):
        conf["debug"] = os.environ["FJORDTEST_RDKAFKA_DEBUG"]
    return conf


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---- producing ----------------------------------------------------------------------------


def produce(client, bootstrap, topic, records, idempotent=False, partition=None, timeout=60):
    """Sends (key, value) byte pairs with acks=all; returns [(partition, offset)] in send
    order. Fails on any error."""
    if client == "kafka-python":
        from kafka import KafkaProducer

        extra = {"enable_idempotence": True} if idempotent else {}
        p = KafkaProducer(
            bootstrap_servers=bootstrap.split(","),
            acks="all",
            retries=20,
            linger_ms=5,
            request_timeout_ms=15000,
            **extra,
        )
        futs = [p.send(topic, key=k, value=v, partition=partition) for k, v in records]
        p.flush(timeout)
        out = []
        for f in futs:
            md = f.get(timeout=timeout)
            out.append((md.partition, md.offset))
        p.close(timeout=10)
        return out
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": timeout * 1000,
    }
    if idempotent:
        conf["enable.idempotence"] = True
    p = Producer(rdkafka(conf))
    acks = [None] * len(records)

    def report(i):
        def cb(err, msg):
            acks[i] = (err, msg.partition(), msg.offset())

        return cb

    for i, (k, v) in enumerate(records):
        while True:
            try:
                if partition is None:
                    p.produce(topic, key=k, value=v, on_delivery=report(i))
                else:
                    p.produce(topic, key=k, value=v, partition=partition, on_delivery=report(i))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(timeout)
    check(left == 0, f"{left} records not acknowledged within {timeout}s")
    out = []
    for i, a in enumerate(acks):
        check(a is not None, f"record {i}: no delivery report")
        check(a[0] is None, f"record {i}: delivery failed: {a[0]}")
        out.append((a[1], a[2]))
    return out


# ---- reading ------------------------------------------------------------------------------


def read_all(client, bootstrap, topic, partitions, limit=60):
    """Every record of topic (partitions 0..n-1) from the start to the end offsets read at the
    start: [(partition, offset, key, value)] in per-partition offset order."""
    out = []
    if client == "kafka-python":
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","), enable_auto_commit=False, group_id=None
        )
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        deadline = time.monotonic() + limit
        while any(c.position(tp) < ends[tp] for tp in tps):
            check(time.monotonic() < deadline, f"reading {topic}: not at {ends} in {limit}s")
            for tp, msgs in c.poll(timeout_ms=200).items():
                for m in msgs:
                    if m.offset < ends[tp]:
                        out.append((m.partition, m.offset, m.key, m.value))
        c.close()
    else:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        c = Consumer(
            rdkafka({
                "bootstrap.servers": bootstrap,
                "group.id": "fjordtest-reader",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            })
        )
        ends = {}
        for p in range(partitions):
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = hi
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        pos = {p: 0 for p in range(partitions)}
        done = {p for p in range(partitions) if ends[p] == 0}
        deadline = time.monotonic() + limit
        while len(done) < partitions:
            check(time.monotonic() < deadline, f"reading {topic}: not at {ends} in {limit}s")
            for m in c.consume(num_messages=500, timeout=0.2):
                if m.error():
                    # Partition EOF: done if the end read at the start is reached.
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        if pos[m.partition()] >= ends[m.partition()]:
                            done.add(m.partition())
                        continue
                    fail(f"consume error: {m.error()}")
                p = m.partition()
                pos[p] = m.offset() + 1
                if m.offset() < ends[p]:
                    out.append((p, m.offset(), m.key(), m.value()))
                if pos[p] >= ends[p]:
                    done.add(p)
        c.close()
    return out


# ---- group members ------------------------------------------------------------------------


class Member(threading.Thread):
    """A consumer-group member polling in its own thread: it records what it reads and
    commits synchronously after each batch; stop() commits and leaves the group."""

    def __init__(self, client, bootstrap, group, topic, name):
        super().__init__(name=name, daemon=True)
        self.client, self.bootstrap, self.group, self.topic = client, bootstrap, group, topic
        self.lock = threading.Lock()
        self.records = []  # (partition, offset, value)
        self.assigned = set()
        self.generations = 0
        self.error = None
        self.stopping = threading.Event()
        self.stopped = threading.Event()

    def assignment(self):
        with self.lock:
            return set(self.assigned)

    def read(self):
        with self.lock:
            return list(self.records)

    def _assign(self, parts):
        with self.lock:
            self.assigned = {p for p in parts}
            self.generations += 1

    def _revoke(self):
        with self.lock:
            self.assigned = set()

    def run(self):
        try:
            if self.client == "kafka-python":
                self._run_kafka_python()
            else:
                self._run_confluent()
        except Exception as e:  # reported by stop()
            self.error = repr(e)
        finally:
            self.stopped.set()

    def _run_kafka_python(self):
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        member = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                member._revoke()

            def on_partitions_assigned(self, assigned):
                member._assign(tp.partition for tp in assigned)

        c = KafkaConsumer(
            bootstrap_servers=self.bootstrap.split(","),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
            client_id=self.name,
        )
        # kafka-python 3.0.12 loses an assignment when a poll's timeout expires while a
        # rejoin triggered by fresh metadata is in flight: learn the topic first, poll long.
        check(c.partitions_for_topic(self.topic), "topic metadata")
        c.subscribe([self.topic], listener=Listener())
        while not self.stopping.is_set():
            batch = c.poll(timeout_ms=1000)
            got = [(m.partition, m.offset, m.value) for msgs in batch.values() for m in msgs]
            if got:
                with self.lock:
                    self.records.extend(got)
                c.commit()
        c.commit()
        c.close()

    def _run_confluent(self):
        from confluent_kafka import Consumer

        c = Consumer(
            rdkafka({
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
                "client.id": self.name,
            })
        )
        c.subscribe(
            [self.topic],
            on_assign=lambda _c, parts: self._assign(tp.partition for tp in parts),
            on_revoke=lambda _c, parts: self._revoke(),
        )
        while not self.stopping.is_set():
            msgs = c.consume(num_messages=500, timeout=0.1)
            got = []
            for m in msgs:
                if m.error():
                    raise RuntimeError(f"consume error: {m.error()}")
                got.append((m.partition(), m.offset(), m.value()))
            if got:
                with self.lock:
                    self.records.extend(got)
                c.commit(asynchronous=False)
        c.close()

    def stop(self, limit=30):
        self.stopping.set()
        check(self.stopped.wait(limit), f"{self.name} did not stop within {limit}s")
        check(self.error is None, f"{self.name}: {self.error}")


def committed(client, bootstrap, group, topic, partitions):
    """The group's committed offsets (OffsetFetch) of topic's partitions: {p: offset or -1}."""
    if client == "kafka-python":
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","), group_id=group, enable_auto_commit=False
        )
        out = {}
        for p in range(partitions):
            o = c.committed(TopicPartition(topic, p))
            out[p] = -1 if o is None else o
        c.close(autocommit=False)
        return out
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        rdkafka({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    )
    tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=20)
    c.close()
    return {tp.partition: (tp.offset if tp.offset >= 0 else -1) for tp in tps}
