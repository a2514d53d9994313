"""Run `sfbd run` on a fresh simulated cluster (`ray.cluster_utils.Cluster`) and print, as
the last line, JSON with where the train workers and denoise actors ran.

    python tests/cluster_run.py --nodes 3 --cpus-per-node 1 -- <sfbd run arguments>

A separate process, because one driver connects to one cluster (the test session's own
cluster stays up meanwhile).
"""

from __future__ import annotations

import argparse
import json
import sys

from sfbd.cli import main as sfbd_main


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--cpus-per-node", type=float, required=True)
    p.add_argument("job_args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    job_args = args.job_args[1:] if args.job_args[:1] == ["--"] else args.job_args

    import ray
    from ray.cluster_utils import Cluster

    node_args = {"num_cpus": args.cpus_per_node, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node_args)
    for _ in range(args.nodes - 1):
        cluster.add_node(**node_args)
    cluster.wait_for_nodes()
    print("cluster_run: cluster up", file=sys.stderr, flush=True)
    try:
        rc = sfbd_main(["run", *job_args, "--address", cluster.address])
        placement: dict[str, list[str]] = {}
        for actor in ray._private.state.actors().values():
            for kind in ("RayTrainWorker", "MapWorker"):
                if kind in actor["ActorClassName"]:
                    placement.setdefault(kind, []).append(actor["Address"]["NodeID"])
        nodes = len([n for n in ray.nodes() if n["Alive"]])
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps({"rc": rc, "nodes": nodes, "placement": placement}))
    return rc


if __name__ == "__main__":
    sys.exit(main())
