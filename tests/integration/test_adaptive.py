#!/usr/bin/env python3
"""
Adaptive warm capacity against a real daemon and real guests
(docs/capacity.md, docs/interface.md "Warm slots"):

- Demand: with the pool on "auto", a burst of creates grows the target and
  the pool fills to it; misses of the burst are counted as pool_empty, and
  hits as hits; after the idle decay (--pool-idle-decay) the target and the
  pool go back to 0.
- Pinned: a number written to the pool file holds through idleness; "auto"
  hands the depth back to the controller; reading the file says which.
- Budget: two templates with demand share a small --pool-budget-mib; the
  slots held never exceed it at any sampled moment, and the controller says
  "budget" for the one it cuts.
- Reasons: a create of a template never baked is a no_snapshot miss; one of
  a template whose config changed is stale; a create that finds only a
  stopped (SIGSTOP) slot is unhealthy. Every create's status names its miss.
- Metrics: emberfs_pool_misses_total by reason matches the stats file.
"""
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

wait_for = harness.wait_for


def stats(d, t="default"):
    return harness.read_json(d.tpl(t, "stats"))


def read(path):
    with open(path) as f:
        return f.read()


class Demand(harness.TestCase):
    def test_burst_grows_idle_shrinks_pin_holds(self):
        with harness.own_daemon(pool=None, extra_args=["--pool-idle-decay", "10"]) as d:
            self.assertEqual(read(d.tpl("default", "pool")), "auto\n")
            # a template that just became ready gets the minimum depth, 1
            wait_for(lambda: stats(d)["warm"] == 1, 30, "the first slot")
            s0 = stats(d)
            self.assertEqual((s0["mode"], s0["target"]), ("auto", 1), s0)
            names = ["b%d" % i for i in range(5)]
            for n in names:
                d.create(n)
            paths = [d.wait_ready(n)["path"] for n in names]
            self.assertEqual(paths.count("warm"), 1, paths)
            for n in names:
                self.assertEqual(d.status(n)["pool_miss"], None if d.status(n)["path"] == "warm" else "pool_empty")
                d.destroy(n)
            s1 = stats(d)
            self.assertEqual(s1["hits"] - s0["hits"], 1, s1)
            self.assertEqual(s1["misses"]["pool_empty"] - s0["misses"]["pool_empty"], 4, s1)
            # the burst is remembered: the controller keeps enough for one like it
            wait_for(lambda: stats(d)["target"] >= 4, 5, "the target grown by the burst")
            self.assertIn(stats(d)["controller"]["reason"], ("burst", "demand"))
            wait_for(lambda: stats(d)["warm"] >= 4, 60, "the pool filled to the new target")
            # the same burst again is served warm
            for n in names[:4]:
                d.create(n)
            self.assertEqual([d.wait_ready(n)["path"] for n in names[:4]], ["warm"] * 4)
            for n in names[:4]:
                d.destroy(n)
            # idle: after the decay, nothing is kept
            wait_for(lambda: stats(d)["target"] == 0, 20, "the target back to 0 after the idle decay")
            self.assertEqual(stats(d)["controller"]["reason"], "idle")
            d.wait_pool(0, timeout=30)
            # a pin holds through idleness
            harness.write_file(d.tpl("default", "pool"), "1\n")
            self.assertEqual(read(d.tpl("default", "pool")), "1\n")
            d.wait_pool(1, timeout=60)
            time.sleep(2.5)  # the controller runs every second: it must not touch a pin
            s = stats(d)
            self.assertEqual((s["mode"], s["target"], s["warm"], s["controller"]["reason"]),
                             ("pinned", 1, 1, "pinned"), s)
            # auto again: idle, so 0
            harness.write_file(d.tpl("default", "pool"), "auto\n")
            self.assertEqual(read(d.tpl("default", "pool")), "auto\n")
            self.assertEqual(stats(d)["target"], 0)
            d.wait_pool(0, timeout=30)
            # the reasons also reach the metrics
            m = read(os.path.join(d.mount, "metrics"))
            self.assertIn('emberfs_pool_misses_total{template="default",reason="pool_empty"} %d'
                          % stats(d)["misses"]["pool_empty"], m)


class Budget(harness.TestCase):
    def test_two_templates_share_the_budget(self):
        # measured slots are ~35-40 MiB (PSS); unmeasured ones count 96 MiB: room for 2-3 at most
        budget = 110
        with harness.own_daemon(pool=None, extra_args=["--pool-budget-mib", str(budget),
                                                       "--pool-idle-decay", "120"]) as d, \
                d.template("b2", bake=True):
            seen_budget = False
            over = []
            deadline = time.monotonic() + 45
            rounds = 0
            while time.monotonic() < deadline and (rounds < 3 or not seen_budget):
                # demand on both: a burst of 3 each
                for t in ("default", "b2"):
                    for i in range(3):
                        d.create("%s%d" % (t[0], i), t=t)
                for t in ("default", "b2"):
                    for i in range(3):
                        d.wait_ready("%s%d" % (t[0], i), t=t)
                        d.destroy("%s%d" % (t[0], i), t=t)
                rounds += 1
                end = time.monotonic() + 4
                while time.monotonic() < end:
                    a, b = stats(d), stats(d, "b2")
                    used = a["budget"]["used_mib"]
                    if used > budget:
                        over.append((a["budget"], a["warm"], a["preparing"], b["warm"], b["preparing"]))
                    for s in (a, b):
                        if s["controller"]["reason"] == "budget" and \
                                s["controller"]["target"] < s["controller"]["demand"]:
                            seen_budget = True
                    time.sleep(0.1)
            self.assertEqual(over, [], "the budget was exceeded")
            self.assertTrue(seen_budget, "the controller never cut a template for the budget: %s %s"
                            % (stats(d), stats(d, "b2")))
            total = stats(d)["budget"]
            self.assertLessEqual(total["used_mib"], budget, total)


class Reasons(harness.TestCase):
    def test_no_snapshot_stale_unhealthy(self):
        with harness.own_daemon(pool=1) as d:
            # never baked: no snapshot, a cold boot
            with d.template("nb"):
                st = d.create_ready("n1", t="nb")
                self.assertEqual((st["path"], st["pool_miss"]), ("cold", "no_snapshot"), st)
                self.assertEqual(stats(d, "nb")["misses"]["no_snapshot"], 1)
                d.destroy("n1", t="nb")
            # a config change makes the default template stale until a rebake
            d.wait_pool(1, timeout=60)
            cfg = harness.read_json(d.tpl("default", "config"))
            harness.write_file(d.tpl("default", "config"), json.dumps({**cfg, "mem_mib": cfg["mem_mib"] + 16}))
            try:
                st = d.create_ready("s1")
                self.assertEqual((st["path"], st["pool_miss"]), ("cold", "stale"), st)
                d.destroy("s1")
            finally:
                harness.write_file(d.tpl("default", "config"), json.dumps(cfg))
            self.assertGreaterEqual(stats(d)["misses"]["stale"], 1)
            # a stopped slot is never handed out: the create is an unhealthy miss
            d.wait_pool(1, timeout=60)
            (sid, slot), = d.slots().items()
            os.kill(slot["vmm_pid"], signal.SIGSTOP)
            try:
                # the stop lands when the VMM's threads next run: only a stopped one is unhealthy
                harness.wait_for(lambda: (harness.proc_stat(slot["vmm_pid"]) or ("?",))[0] == "T", 10,
                                 "the slot's VMM stopped")
                st = d.create_ready("u1")
                self.assertEqual((st["path"], st["pool_miss"]), ("restore", "unhealthy"), st)
                d.destroy("u1")
            finally:
                try:
                    os.kill(slot["vmm_pid"], signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self.assertEqual(stats(d)["misses"]["unhealthy"], 1)


if __name__ == "__main__":
    harness.main()
