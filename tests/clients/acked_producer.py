"""A confluent-kafka (librdkafka) producer that writes records with acks=all while brokers
are being killed, and records every acknowledgement: the partition and offset the broker
reported for each record.

Each logical record i goes to partition i % partitions. librdkafka's own retries are off
(retries=0), so no record string is ever sent twice: a failed send is re-sent by this
script under a new string "i-attempt". A record string therefore appears at most once in
a correct log, and an acknowledged one exactly once, at its acknowledged offset.

Sends new records at --rate until at least --records were sent AND --stop-file exists
(the test creates it once its faults are done), then waits until every one of them is
acknowledged (re-sending failures) and writes one line per acknowledgement,
"partition offset value", to --acks-out. While running it rewrites --progress with the
number of acknowledged logical records.

usage: acked_producer.py BOOTSTRAP TOPIC PARTITIONS --records N --rate R
                         --stop-file F --progress F --acks-out F
"""

import argparse
import collections
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
    ap.add_argument("--deadline-s", type=float, default=600)
    args = ap.parse_args()

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "acks": "all",
            "retries": 0,
            "enable.idempotence": False,
            "linger.ms": 5,
            "message.timeout.ms": 20000,
            "request.timeout.ms": 10000,
            "topic.metadata.refresh.interval.ms": 1000,
            "socket.timeout.ms": 10000,
        }
    )

    acked = {}  # logical id -> (partition, offset, value)
    retry = collections.deque()  # (logical id, next attempt)
    failures = collections.Counter()

    def on_delivery(err, msg):
        logical, attempt = (int(x) for x in msg.value().decode().split("-"))
        if err is not None:
            failures[err.name()] += 1
            retry.append((logical, attempt + 1))
            return
        assert logical not in acked, f"record {logical} acknowledged twice"
        acked[logical] = (msg.partition(), msg.offset(), msg.value().decode())

    def send(logical, attempt):
        value = f"{logical}-{attempt}"
        while True:
            try:
                producer.produce(
                    args.topic,
                    value=value.encode(),
                    partition=logical % args.partitions,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                producer.poll(0.05)

    started = time.monotonic()
    next_logical = 0
    last_progress = 0.0
    stopping = False
    while True:
        now = time.monotonic()
        if now - started > args.deadline_s:
            sys.exit(f"not done after {args.deadline_s}s: {len(acked)} of {next_logical} "
                     f"acknowledged, failures {dict(failures)}")
        if not stopping and next_logical >= args.records and os.path.exists(args.stop_file):
            stopping = True
        if not stopping:
            # new records at the given rate for as long as the faults go on
            due = int((now - started) * args.rate)
            while next_logical < due:
                send(next_logical, 0)
                next_logical += 1
        while retry:
            send(*retry.popleft())
        producer.poll(0.01)
        if now - last_progress > 0.2:
            with open(args.progress + ".tmp", "w") as f:
                f.write(str(len(acked)))
            os.replace(args.progress + ".tmp", args.progress)
            last_progress = now
        if stopping and len(acked) == next_logical:
            break
    producer.flush(30)
    with open(args.acks_out, "w") as f:
        for logical in sorted(acked):
            p, o, v = acked[logical]
            f.write(f"{p} {o} {v}\n")
    print(f"acknowledged {len(acked)} records; failed sends re-sent: {dict(failures)}")


if __name__ == "__main__":
    main()
