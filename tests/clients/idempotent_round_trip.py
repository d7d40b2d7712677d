"""An idempotent producer with the client's defaults, then a read back: kafka-python 3's
default KafkaProducer (idempotence on by default, acks=all), or confluent-kafka
(librdkafka) with enable.idempotence=true. Each record i goes to partition i % PARTITIONS;
prints one line per acknowledgement, "partition offset value", after the line "acks".

usage: idempotent_round_trip.py kafka-python|confluent BOOTSTRAP TOPIC PARTITIONS COUNT
"""

import sys


def kafka_python(bootstrap, topic, partitions, count):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    assert producer.config["enable_idempotence"], "kafka-python 3 defaults to idempotence"
    futures = [
        (i, producer.send(topic, value=b"%d" % i, partition=i % partitions))
        for i in range(count)
    ]
    producer.flush(60)
    acks = []
    for i, f in futures:
        md = f.get(timeout=30)
        acks.append((md.partition, md.offset, i))
    producer.close()
    return acks


def confluent(bootstrap, topic, partitions, count):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    acks = []
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acks.append((msg.partition(), msg.offset(), int(msg.value())))

    for i in range(count):
        while True:
            try:
                producer.produce(topic, value=b"%d" % i, partition=i % partitions,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(60)
    assert left == 0 and not errors, f"{left} undelivered, errors {errors[:5]}"
    return acks


def main():
    client, bootstrap, topic, partitions, count = sys.argv[1:6]
    run = {"kafka-python": kafka_python, "confluent": confluent}[client]
    acks = run(bootstrap, topic, int(partitions), int(count))
    print("acks")
    for p, o, v in acks:
        print(p, o, v)


if __name__ == "__main__":
    main()
