"""A confluent-kafka consumer in a group (subscribe, auto commit) until --stop-file exists.
Prints, as they happen, "record PARTITION OFFSET VALUE" per record and
"assignment P,P,..." at every assignment change (empty while revoked); then commits and
closes (leaving the group).

usage: group_consumer.py BOOTSTRAP GROUP TOPIC --stop-file PATH [--assignor NAME]
"""

import argparse
import os
import time

from confluent_kafka import Consumer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("group")
    ap.add_argument("topic")
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--max-s", type=float, default=120.0)
    ap.add_argument("--assignor", default="range,roundrobin")
    args = ap.parse_args()
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "partition.assignment.strategy": args.assignor,
        }
    )

    def show(c, partitions):
        # the new assignment (eager: all of it; cooperative: what is added to the current)
        parts = sorted({p.partition for p in c.assignment()} | {p.partition for p in partitions})
        print("assignment " + ",".join(str(p) for p in parts), flush=True)

    def revoked(c, partitions):
        # eager assignors revoke everything; cooperative ones only `partitions`
        left = sorted({p.partition for p in c.assignment()} - {p.partition for p in partitions})
        print("assignment " + ",".join(str(p) for p in left), flush=True)

    consumer.subscribe([args.topic], on_assign=show, on_revoke=revoked)
    start = time.monotonic()
    while time.monotonic() - start < args.max_s and not os.path.exists(args.stop_file):
        m = consumer.poll(0.2)
        if m is not None and not m.error():
            print(f"record {m.partition()} {m.offset()} {m.value().decode()}", flush=True)
    consumer.close()


if __name__ == "__main__":
    main()
