"""Sends --count records of --size bytes with acks=all to one partition as fast as
librdkafka batches them (linger.ms=5, batch.size=1000000: the shape of
`rdkafka_performance -P -a -1`), waits for every delivery report and prints one line:
"RECORDS SECONDS FAILED". The caller compares two runs' rates (a ratio, not a timing).

usage: timed_producer.py BOOTSTRAP TOPIC PARTITION --count N [--size BYTES]
"""

import argparse
import time

from confluent_kafka import Producer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("topic")
    ap.add_argument("partition", type=int)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--size", type=int, default=100)
    args = ap.parse_args()
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 1000000,
            "queue.buffering.max.messages": 1000000,
            "message.timeout.ms": 120000,
        }
    )
    failed = 0

    def report(err, _msg):
        nonlocal failed
        if err is not None:
            failed += 1

    value = b"x" * args.size
    # metadata and connections first: the timing covers the records only
    producer.list_topics(args.topic, timeout=30)
    start = time.monotonic()
    for _ in range(args.count):
        while True:
            try:
                producer.produce(args.topic, value, partition=args.partition, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    left = producer.flush(120)
    elapsed = time.monotonic() - start
    print(f"{args.count} {elapsed:.3f} {failed + left}", flush=True)


if __name__ == "__main__":
    main()
