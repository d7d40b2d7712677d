"""A consumer assigned to many partitions at once, with a real client: confluent-kafka
(librdkafka: full fetches, no sessions) or kafka-python (KIP-227 incremental fetch
sessions, on by default). Creates TOPIC with PARTITIONS partitions, writes one record to
each, reads them all back; then, with the consumer still fetching (for kafka-python
through its session, naming only what changed), writes a second record to every third
partition and reads those. Every record must come back once, from the partition it was
written to. With kafka-python the broker must have given the consumer a session.

Usage: many_partitions.py BOOTSTRAP confluent|kafka-python TOPIC PARTITIONS
"""
import sys
import time

bootstrap, client, topic, partitions = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
DEADLINE_S = 120


def expect(written, poll):
    """Polls until every (partition, value) in `written` was read, once."""
    seen = {}
    deadline = time.time() + DEADLINE_S
    while len(seen) < len(written) and time.time() < deadline:
        for partition, value in poll():
            assert (partition, value) in written, f"unexpected {value!r} from partition {partition}"
            assert (partition, value) not in seen, f"{value!r} read twice"
            seen[(partition, value)] = True
    missing = sorted(written - set(seen))[:5]
    assert not missing, f"{len(written) - len(seen)} records not read, e.g. {missing}"


if client == "confluent":
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, partitions, 1)], request_timeout=60).values():
        f.result()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def write(parts, tag):
        values = set()
        for p in parts:
            value = f"{tag}-{p}".encode()
            producer.produce(topic, value=value, partition=p)
            values.add((p, value))
        assert producer.flush(60) == 0, "every record delivered"
        return values

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])

    def poll():
        out = []
        for m in consumer.consume(num_messages=1000, timeout=1.0):
            assert m.error() is None, m.error()
            out.append((m.partition(), m.value()))
        return out
else:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60000)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)

    def write(parts, tag):
        values = set()
        futures = []
        for p in parts:
            value = f"{tag}-{p}".encode()
            futures.append(producer.send(topic, value=value, partition=p))
            values.add((p, value))
        producer.flush(60)
        for f in futures:
            f.get(timeout=60)
        return values

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()

    def poll():
        out = []
        for records in consumer.poll(timeout_ms=1000, max_records=1000).values():
            out.extend((r.partition, r.value) for r in records)
        return out

expect(write(range(partitions), "first"), poll)
# the consumer keeps fetching (idle) for a moment, then every third partition gets a record
for _ in range(3):
    assert poll() == [], "nothing new yet"
expect(write(range(0, partitions, 3), "second"), poll)

if client == "kafka-python":
    handlers = consumer._fetcher._session_handlers
    sessions = [h.next_metadata.session_id for h in handlers.values()]
    epochs = [h.next_metadata.epoch for h in handlers.values()]
    assert sessions and all(s > 0 for s in sessions), f"no fetch session: {sessions}"
    assert all(e > 1 for e in epochs), f"no incremental fetch: epochs {epochs}"
    print(f"fetch sessions {sessions}, next epochs {epochs}")
consumer.close()
print(f"many partitions ok: {partitions} partitions, client {client}")
