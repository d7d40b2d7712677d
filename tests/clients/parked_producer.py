"""Sends --count acks=all records to one partition through one broker and prints one line
per delivery report: "ok PARTITION OFFSET VALUE" or "err ERROR_NAME VALUE". librdkafka's
retries are off, and its timeouts are long, so what is printed is what the broker answered
to the first send of each record.

usage: parked_producer.py BOOTSTRAP TOPIC PARTITION PREFIX --count N
"""

import argparse
import sys

from confluent_kafka import Producer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("topic")
    ap.add_argument("partition", type=int)
    ap.add_argument("prefix")
    ap.add_argument("--count", type=int, required=True)
    args = ap.parse_args()
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "acks": "all",
            "retries": 0,
            "enable.idempotence": False,
            "request.timeout.ms": 120000,
            "message.timeout.ms": 180000,
            "socket.timeout.ms": 120000,
        }
    )

    def on_delivery(err, msg):
        value = msg.value().decode()
        if err is None:
            print(f"ok {msg.partition()} {msg.offset()} {value}", flush=True)
        else:
            print(f"err {err.name()} {value}", flush=True)

    for i in range(args.count):
        producer.produce(
            args.topic, f"{args.prefix}-{i}".encode(), partition=args.partition,
            on_delivery=on_delivery,
        )
    producer.flush(200)
    if len(producer):
        print(f"{len(producer)} records without a delivery report", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
