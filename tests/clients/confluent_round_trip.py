"""confluent-kafka (librdkafka) against a Sluice broker: an acks=1 producer sends records
with keys, values and headers; a consumer in assign mode reads them back from the start
and every record must match, at the offset its delivery report gave. Then a record above
the broker's message.max.bytes must be refused with MSG_SIZE_TOO_LARGE.

Usage: confluent_round_trip.py BOOTSTRAP
"""
import sys

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap = sys.argv[1]
topic = "confluent-round-trip"
count = 5000

admin = AdminClient({"bootstrap.servers": bootstrap})
futures = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
futures[topic].result(timeout=30)

producer = Producer({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 5})
delivered = {}
errors = []


def reporter(i):
    def report(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[(msg.partition(), msg.offset())] = i

    return report


sent = []
for i in range(count):
    key = b"key-%d" % (i % 97)
    value = (b"value-%d-" % i) * (1 + i % 13)
    headers = [("h1", b"one-%d" % i), ("empty", b""), ("h1", b"repeat")]
    if i % 10 == 0:
        key = None
    if i % 17 == 0:
        headers = []
    sent.append((key, value, headers))
    producer.produce(topic, key=key, value=value, headers=headers, on_delivery=reporter(i))
    producer.poll(0)
remaining = producer.flush(60)
assert remaining == 0, f"{remaining} records not delivered"
assert not errors, f"delivery errors: {errors[:3]}"
assert len(delivered) == count, f"{len(delivered)} delivered of {count}"

consumer = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": "round-trip-assign-only",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    }
)
consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
received = {}
eof = set()
while len(eof) < 3:
    msg = consumer.poll(30)
    assert msg is not None, "consumer timed out"
    if msg.error():
        if msg.error().code() == KafkaError._PARTITION_EOF:
            eof.add(msg.partition())
            continue
        raise SystemExit(f"consume error: {msg.error()}")
    eof.discard(msg.partition())
    headers = msg.headers() or []
    received[(msg.partition(), msg.offset())] = (msg.key(), msg.value(), headers)
consumer.close()

assert len(received) == count, f"received {len(received)} of {count}"
for where, i in delivered.items():
    key, value, headers = sent[i]
    got = received.get(where)
    assert got is not None, f"record at {where} missing"
    assert got[0] == key and got[1] == value, f"record at {where}: {got[:2]} != {(key, value)}"
    assert list(got[2]) == list(headers or []), f"headers at {where}: {got[2]} != {headers}"
# every record sent arrived once
assert sorted((k or b"", v) for k, v, _ in received.values()) == sorted(
    (k or b"", v) for k, v, _ in sent
)
print("round trip ok")

# the client's own limit is raised so that the broker's (message.max.bytes) decides
big = Producer({"bootstrap.servers": bootstrap, "acks": 1, "message.max.bytes": 4000000,
                "compression.type": "none"})
outcome = []
big.produce(topic, value=b"x" * 2_000_000, partition=0,
            on_delivery=lambda err, msg: outcome.append(err))
big.flush(30)
assert len(outcome) == 1 and outcome[0] is not None, f"oversized record accepted: {outcome}"
print("too large refused:", outcome[0].name())
