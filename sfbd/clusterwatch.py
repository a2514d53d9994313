"""Notice, from the driver, that the Ray cluster is gone, and say so in one line.

When the head node, its GCS or the driver's raylet dies, Ray's client waits for the GCS to
come back (`gcs_rpc_server_reconnect_timeout_s`, 60 s by default) and then ends the process
with its own messages. A run should instead stop within a few seconds naming the stage in
progress and how to resume. `ClusterWatch` probes the GCS and the local raylet with plain TCP
connections from a daemon thread (no Ray call, which would block on the lost GCS) and calls
`on_lost(reason)` once when either has refused or ignored connections for `grace_s` seconds.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

GRACE_S = float(os.environ.get("SFBD_CLUSTER_LOST_S", "5"))


def _reachable(address: str, timeout: float) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


class ClusterWatch:
    """Probes `addresses` ("host:port") every `period_s` until stopped."""

    def __init__(
        self,
        addresses: dict[str, str],
        on_lost: Callable[[str], None],
        grace_s: float = GRACE_S,
        period_s: float = 1.0,
    ):
        self.addresses, self.on_lost = addresses, on_lost
        self.grace_s, self.period_s = grace_s, period_s
        self._stop = threading.Event()
        self._claim_lock, self._claimed = threading.Lock(), False
        self._thread = threading.Thread(target=self._loop, name="sfbd-cluster-watch", daemon=True)

    def start(self) -> ClusterWatch:
        if self.addresses:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if not self._claim() and self._thread.is_alive():
            self._thread.join()  # `on_lost` is running; it ends the process

    def _claim(self) -> bool:
        """True for the one caller that may report the loss (thread or `check_now`)."""
        with self._claim_lock:
            first, self._claimed = not self._claimed, True
            return first

    def check_now(self, timeout_s: float = 2.0) -> None:
        """Probe once, now, and call `on_lost` if a probed address does not answer. For a
        Ray error in the driver: an actor call can fail on a lost raylet ("actor is
        unavailable") before the thread's grace period has passed."""
        for name, address in self.addresses.items():
            if not _reachable(address, timeout=timeout_s):
                if self._claim():
                    self.on_lost(f"lost the Ray cluster: its {name} at {address} does not answer")
                return

    def _loop(self) -> None:
        down_since: dict[str, float] = {}
        while not self._stop.wait(self.period_s):
            now = time.monotonic()
            for name, address in self.addresses.items():
                if _reachable(address, timeout=min(self.period_s, 2.0)):
                    down_since.pop(name, None)
                    continue
                since = down_since.setdefault(name, now)
                if now - since >= self.grace_s and not self._stop.is_set() and self._claim():
                    self.on_lost(
                        f"lost the Ray cluster: its {name} at {address} has not answered "
                        f"for {now - since:.0f} s"
                    )
                    return


def cluster_addresses() -> dict[str, str]:
    """The GCS and this node's raylet of the connected Ray session."""
    import ray

    node = ray._private.worker.global_worker.node
    return {
        "GCS": ray.get_runtime_context().gcs_address,
        "raylet": f"{node.node_ip_address}:{node.node_manager_port}",
    }
