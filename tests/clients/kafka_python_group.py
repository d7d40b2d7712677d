"""A kafka-python consumer in a group (subscribe, auto offset reset earliest): consumes
TOPIC until 5 s pass with no record, commits, closes, and prints "VALUE" per record.

usage: kafka_python_group.py BOOTSTRAP GROUP TOPIC
"""

import sys

from kafka import KafkaConsumer


def main():
    bootstrap, group, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap.split(","),
        group_id=group,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    for record in consumer:
        print(record.value.decode(), flush=True)
    consumer.commit()
    consumer.close()


if __name__ == "__main__":
    main()
