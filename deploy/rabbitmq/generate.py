#!/usr/bin/env python3
"""Writes the RabbitMQ definitions of jelou-bridge's topology, and the bridge settings that
consume it, exactly as the bridge itself would declare them (src/amqp/topology.rs).

    deploy/rabbitmq/generate.py                  # rewrite the committed files
    deploy/rabbitmq/generate.py --shards 12 --out /tmp/defs   # another shard count

Files (in --out, default: this directory):
  definitions.json          the default topology: one quorum queue bound to the helpdesk exchange
  definitions-sharded.json  the scale-out topology: a consistent-hash exchange keyed on the
                            x-ticket-id header in front of N single-active-consumer queues
  bridge-sharded.toml       the [amqp] settings for replicas consuming the sharded topology

Load a definitions file with `rabbitmqctl import_definitions FILE` (or `load_definitions` in
rabbitmq.conf) and run the bridge with `amqp.declare_topology = false`, or let the bridge
declare the same topology itself. Names and tiers below are config/default.toml's; change
them here and in the bridge's configuration together. scripts/check-deploy.sh checks the
committed files are what this script writes, and that the broker accepts the bridge's own
declarations on top of them (same arguments everywhere).
"""

import argparse
import json
import pathlib
import re

EXCHANGE = "helpdesk"
QUEUE = "jelou-bridge.tickets"
EVENTS_EXCHANGE = "jelou-bridge.events"
BINDING_KEYS = ["ticket.opened", "ticket.resolved"]
DELIVERY_LIMIT = 20
DELAYS = ["5s", "30s", "2m", "10m", "30m"]
SHARD_EXCHANGE = "jelou-bridge.shards"
SHARD_HEADER = "x-ticket-id"
VHOST = "/"


def millis(duration):
    n, unit = re.fullmatch(r"(\d+)(ms|s|m|h)", duration).groups()
    return int(n) * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[unit]


def shard_queue(i):
    return f"{QUEUE}.shard-{i}"


def dlx():
    return f"{QUEUE}.dlx"


def base_args():
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def queue(name, arguments):
    return {
        "name": name,
        "vhost": VHOST,
        "durable": True,
        "auto_delete": False,
        "arguments": arguments,
    }


def exchange(name, kind, arguments=None):
    return {
        "name": name,
        "vhost": VHOST,
        "type": kind,
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": arguments or {},
    }


def binding(source, destination, kind, key):
    return {
        "source": source,
        "vhost": VHOST,
        "destination": destination,
        "destination_type": kind,
        "routing_key": key,
        "arguments": {},
    }


def definitions(shards):
    """shards = 0: the default single-queue topology."""
    work = [shard_queue(i) for i in range(shards)] if shards else [QUEUE]
    exchanges = [
        exchange(EXCHANGE, "topic"),
        exchange(EVENTS_EXCHANGE, "topic"),
        # Fanout: a dead letter keeps its routing key and still routes.
        exchange(dlx(), "fanout"),
    ]
    queues = [queue(f"{QUEUE}.dead", {"x-queue-type": "quorum"})]
    bindings = [binding(dlx(), f"{QUEUE}.dead", "queue", "")]
    for q in work:
        args = base_args()
        args["x-dead-letter-exchange"] = dlx()
        args["x-delivery-limit"] = DELIVERY_LIMIT
        if shards:
            args["x-single-active-consumer"] = True
        queues.append(queue(q, args))
        for d in DELAYS:
            # A parked message waits out its tier, then dead-letters back into its queue.
            delay = base_args()
            delay["x-message-ttl"] = millis(d)
            delay["x-dead-letter-exchange"] = ""
            delay["x-dead-letter-routing-key"] = q
            queues.append(queue(f"{q}.delay.{d}", delay))
    if shards:
        exchanges.append(
            exchange(SHARD_EXCHANGE, "x-consistent-hash", {"hash-header": SHARD_HEADER})
        )
        bindings += [binding(EXCHANGE, SHARD_EXCHANGE, "exchange", k) for k in BINDING_KEYS]
        # Weight 1 each, bound in this order: the hash ring follows binding order.
        bindings += [binding(SHARD_EXCHANGE, q, "queue", "1") for q in work]
    else:
        bindings += [binding(EXCHANGE, QUEUE, "queue", k) for k in BINDING_KEYS]
    work_pattern = QUEUE.replace(".", r"\.") + (r"\.shard-[0-9]+" if shards else "")
    policies = [
        {
            # The same limits as the queues' own arguments, owned by the operator: they also
            # cover ticket queues declared by hand, and can be tightened without redeclaring.
            "vhost": VHOST,
            "name": "jelou-bridge-ticket-queues",
            "pattern": f"^{work_pattern}$",
            "apply-to": "queues",
            "priority": 1,
            "definition": {
                "delivery-limit": DELIVERY_LIMIT,
                "dead-letter-exchange": dlx(),
                "dead-letter-strategy": "at-least-once",
                "overflow": "reject-publish",
            },
        }
    ]
    return {
        "rabbit_version": "3.10.0",
        "vhosts": [{"name": VHOST}],
        "policies": policies,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }


def bridge_config(shards):
    names = ",\n".join(f'    "{shard_queue(i)}"' for i in range(shards))
    return f"""# [amqp] settings for bridge replicas consuming the sharded topology of
# definitions-sharded.json (written by deploy/rabbitmq/generate.py; docs/scaling.md).
# Layer it with --config, and give each process its replica index in the environment:
#   JELOU_BRIDGE__AMQP__REPLICA_INDEX=0, 1, 2, …   (index i consumes shard j when
#   j % replica_count == i % replica_count; equal shares wait as standbys)

[amqp]
# The helpdesk must set the header named by shard_header to the ticket id on every event.
shard_exchange = "{SHARD_EXCHANGE}"
shard_header = "{SHARD_HEADER}"
# Same queues in the same order on every replica.
consume_queues = [
{names},
]
# How many replicas share the shards ({shards} shards: 1, 2, 3 or {shards} divide them evenly).
replica_count = 3

[store]
# Replicas share one PostgreSQL store (give the URL, with its password, in the environment:
# JELOU_BRIDGE__STORE__URL=postgres://jelou_bridge:…@db.internal/jelou_bridge).
url = "postgres://jelou_bridge@localhost/jelou_bridge"
"""


def main():
    here = pathlib.Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=6, help="shard queues (default 6)")
    parser.add_argument("--out", type=pathlib.Path, default=here, help="output directory")
    args = parser.parse_args()
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    files = {
        "definitions.json": json.dumps(definitions(0), indent=2) + "\n",
        "definitions-sharded.json": json.dumps(definitions(args.shards), indent=2) + "\n",
        "bridge-sharded.toml": bridge_config(args.shards),
    }
    for name, text in files.items():
        (args.out / name).write_text(text)
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
