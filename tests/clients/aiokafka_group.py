"""An aiokafka consumer in a group (subscribe, auto offset reset earliest): consumes TOPIC
until 5 s pass with no record, commits, stops (leaving the group), and prints "VALUE" per
record.

usage: aiokafka_group.py BOOTSTRAP GROUP TOPIC
"""

import asyncio
import sys

from aiokafka import AIOKafkaConsumer


async def consume(bootstrap, group, topic):
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap.split(","),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=5000)
            if not batches:
                break
            for records in batches.values():
                for record in records:
                    print(record.value.decode(), flush=True)
            await consumer.commit()
    finally:
        await consumer.stop()


def main():
    asyncio.run(consume(sys.argv[1], sys.argv[2], sys.argv[3]))


if __name__ == "__main__":
    main()
