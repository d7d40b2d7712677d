"""kafka-python (a pure-Python client, no librdkafka) against a Sluice broker: it detects
the broker version from ApiVersions (kafka-python 3 opens with ApiVersions v4), creates a
topic with its admin client, produces with acks=1 and reads everything back with a
consumer in assign mode.

Usage: kafka_python_round_trip.py BOOTSTRAP
"""
import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

bootstrap = sys.argv[1]
topic = "kafka-python-round-trip"
count = 2000

admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
print("broker version detected:", admin._client.check_version())
admin.close()

producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
futures = []
for i in range(count):
    key = b"k%d" % (i % 7)
    value = b"python-%d" % i
    futures.append((key, value, producer.send(topic, key=key, value=value,
                                              headers=[("n", b"%d" % i)])))
producer.flush(60)
delivered = {}
for key, value, f in futures:
    md = f.get(timeout=30)
    delivered[(md.partition, md.offset)] = (key, value)
producer.close()
assert len(delivered) == count, f"{len(delivered)} delivered of {count}"

consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                         consumer_timeout_ms=10000)
partitions = [TopicPartition(topic, p) for p in range(2)]
consumer.assign(partitions)
consumer.seek_to_beginning(*partitions)
received = {}
for msg in consumer:
    received[(msg.partition, msg.offset)] = (msg.key, msg.value)
    if len(received) == count:
        break
consumer.close()
assert received == delivered, f"received {len(received)} records, {sum(1 for k in delivered if received.get(k) != delivered[k])} differ"
print("round trip ok")
