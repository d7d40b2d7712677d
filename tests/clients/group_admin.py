"""confluent-kafka's AdminClient on consumer groups: lists them ("list GROUP STATE") and
describes GROUP ("describe GROUP STATE ASSIGNOR MEMBERS PARTITIONS", then "member HOST"
for each member).

usage: group_admin.py BOOTSTRAP GROUP
"""

import sys

from confluent_kafka.admin import AdminClient


def main():
    bootstrap, group = sys.argv[1], sys.argv[2]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    listed = admin.list_consumer_groups(request_timeout=20).result()
    for g in listed.valid:
        print(f"list {g.group_id} {g.state.name}", flush=True)
    described = admin.describe_consumer_groups([group], request_timeout=20)[group].result()
    partitions = sum(len(m.assignment.topic_partitions) for m in described.members)
    print(
        f"describe {described.group_id} {described.state.name} "
        f"{described.partition_assignor} {len(described.members)} {partitions}",
        flush=True,
    )
    for m in described.members:
        print(f"member {m.host}", flush=True)


if __name__ == "__main__":
    main()
