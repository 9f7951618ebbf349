"""Propagation across hosts: an entry appended by famfsctl on the master → visible by `stat`
through a client's mount (that client's agent and mount together), idle, counting names the
client had already cached as negative lookups (every sample looks its name up first).

Baseline, in the same run and the same samples: the same append → the client's shadow file
exists (the agent alone); the difference is what the mount's invalidation adds.
"""

from __future__ import annotations

from bench.common import Result
from demo.cluster import Cluster, wait_until
from demo.propagation import measure, percentile

SAMPLES = {True: 5, False: 200}
SHADOW_BASELINE = "same append → client's shadow file (agent alone)"


def run(quick: bool) -> list[Result]:
    samples = SAMPLES[quick]
    appear: dict[str, list[float]] = {"mount": [], "shadow": []}
    vanish: dict[str, list[float]] = {"mount": [], "shadow": []}
    # The master only runs famfsctl here: its own agent and mount would compete for the 2 cores.
    with Cluster(size="2g", clients=1, serve_master=False) as cluster:
        client = cluster.clients[0]
        cluster.ctl("mkdir", "bench")
        wait_until(lambda: client.view("bench").exists(), 30, "bench/ on the client")
        for number in range(samples):
            relpath = f"bench/f{number}"
            watched = {"mount": client.view(relpath), "shadow": client.shadow_root / relpath}
            created = measure(cluster, ["creat", "-s", "4096", relpath], watched)
            removed = measure(cluster, ["rm", relpath], watched, appear=False)
            for label in watched:
                appear[label].append(created.visible_s[label] * 1000)
                vanish[label].append(removed.visible_s[label] * 1000)
    note = f"{samples} samples, idle; negative lookup cached"
    return [
        Result("propagation: creat on master → stat on client mount, p50", percentile(appear["mount"], 0.5), "ms",
               percentile(appear["shadow"], 0.5), SHADOW_BASELINE, f"target ≤ 3 ms; {note}"),
        Result("propagation: creat on master → stat on client mount, p99", percentile(appear["mount"], 0.99), "ms",
               percentile(appear["shadow"], 0.99), SHADOW_BASELINE, f"target ≤ 20 ms; {note}"),
        Result("propagation: rm on master → gone on client mount, p50", percentile(vanish["mount"], 0.5), "ms",
               percentile(vanish["shadow"], 0.5), SHADOW_BASELINE, f"{samples} samples, idle; name cached positive"),
        Result("propagation: rm on master → gone on client mount, p99", percentile(vanish["mount"], 0.99), "ms",
               percentile(vanish["shadow"], 0.99), SHADOW_BASELINE, f"{samples} samples, idle"),
    ]
