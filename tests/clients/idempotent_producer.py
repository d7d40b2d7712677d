"""A confluent-kafka (librdkafka) idempotent producer (enable.idempotence=true, acks=all,
librdkafka's default retries) writing while brokers are killed and paused. Each record i
(the value "i") goes to partition i % PARTITIONS, so within a partition the values must
ascend in offset order — the order this one producer sent them — and, with idempotence,
appear exactly once however often librdkafka retried them.

Sends new records at --rate until at least --records were sent AND --stop-file exists,
then flushes. Writes one line per acknowledgement, "partition offset value", to
--acks-out, and one line per failed delivery, "value error", to --failed-out. While
running it rewrites --progress with the number of acknowledged records.

usage: idempotent_producer.py BOOTSTRAP TOPIC PARTITIONS --records N --rate R
                              --stop-file F --progress F --acks-out F --failed-out F
"""

import argparse
import os
import sys
import time

from confluent_kafka import Producer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("topic")
    ap.add_argument("partitions", type=int)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--rate", type=int, required=True, help="new records per second")
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--progress", required=True)
    ap.add_argument("--acks-out", required=True)
    ap.add_argument("--failed-out", required=True)
    ap.add_argument("--deadline-s", type=float, default=600)
    args = ap.parse_args()

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )

    acked = []
    failed = []

    def on_delivery(err, msg):
        if err is not None:
            failed.append((msg.value().decode(), err.name()))
        else:
            acked.append((msg.partition(), msg.offset(), msg.value().decode()))

    started = time.monotonic()
    sent = 0
    last_progress = 0.0
    while True:
        now = time.monotonic()
        if now - started > args.deadline_s:
            sys.exit(f"not done after {args.deadline_s}s: {len(acked)} of {sent} acknowledged")
        if sent >= args.records and os.path.exists(args.stop_file):
            break
        due = int((now - started) * args.rate)
        while sent < due:
            try:
                producer.produce(args.topic, value=str(sent).encode(),
                                 partition=sent % args.partitions, on_delivery=on_delivery)
                sent += 1
            except BufferError:
                break
        producer.poll(0.01)
        if now - last_progress > 0.2:
            with open(args.progress + ".tmp", "w") as f:
                f.write(str(len(acked)))
            os.replace(args.progress + ".tmp", args.progress)
            last_progress = now
    left = producer.flush(120)
    with open(args.acks_out, "w") as f:
        for p, o, v in acked:
            f.write(f"{p} {o} {v}\n")
    with open(args.failed_out, "w") as f:
        for v, e in failed:
            f.write(f"{v} {e}\n")
    print(f"sent {sent}, acknowledged {len(acked)}, failed {len(failed)}, undelivered {left}")


if __name__ == "__main__":
    main()
