#!/usr/bin/env python3
"""
Adaptive warm capacity against real guests: `contrib/bench.sh adaptive` runs
this (it can also run alone, from the repository, as root).

A bursty trace of creates is replayed twice against fresh daemons:

  adaptive  --pool auto (the default) with --pool-idle-decay BENCH_ADAPT_DECAY
            (default 30 s): the capacity controller sets the depth.
  fixed     --pool K, K the smallest depth that serves every burst of the
            trace warm from a full pool (the burst size): the baseline the
            issue asks for ("the smallest fixed depth that matches the
            adaptive hit rate", or the best one within the same budget).

The trace: BENCH_ADAPT_EPISODES episodes (default 2), each BENCH_ADAPT_BURSTS
bursts (default 20) of BENCH_ADAPT_SIZE creates at once (default 4) every
BENCH_ADAPT_EVERY seconds (default 6), episodes separated by
BENCH_ADAPT_GAP seconds of no creates (default 240). Every created sandbox
is destroyed once ready. A create is a hit when its status says path "warm".

Slot-MiB-seconds: the daemon's templates/default/stats is sampled every
0.25 s; (warm + preparing slots) x the measured slot PSS (MiB), integrated
over the trace's duration (from the first create to the end of the last gap
or episode). A fixed pool is full between bursts whatever the trace, so its
run replays one episode and its slot-MiB-s are scaled to the adaptive run's
duration (said so in the output: "fixed_scaled": true).

Timeline: the sampler also keeps the adaptive run's timeline, one point
every TIMELINE_S (1 s): [t_s, target, warm, creates]; t_s from the start of
the trace, target and warm from the stats file at that moment, creates those
counted since the previous point (contrib/plot.py draws it).

Output: a table on stderr and one JSON line on stdout:
{"bench":"adaptive","trace":"bursty","hit_rate":..,"slot_mib_s":..,"fixed_depth":K,
 "fixed_hit_rate":..,"fixed_slot_mib_s":..,"ratio":..,...,
 "timeline":[[t_s,target,warm,creates],...]}
"""
import json
import os
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import harness  # noqa: E402

EPISODES = int(os.environ.get("BENCH_ADAPT_EPISODES", "2"))
BURSTS = int(os.environ.get("BENCH_ADAPT_BURSTS", "20"))
SIZE = int(os.environ.get("BENCH_ADAPT_SIZE", "4"))
EVERY = float(os.environ.get("BENCH_ADAPT_EVERY", "6"))
GAP = float(os.environ.get("BENCH_ADAPT_GAP", "240"))
DECAY = int(os.environ.get("BENCH_ADAPT_DECAY", "30"))
TIMELINE_S = 1.0  # the controller decides about once a second


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Sampler(threading.Thread):
    """Integrates slots x MiB over time from the stats file and keeps a timeline:
    every TIMELINE_S [t_s, target, warm, creates since the previous point]."""

    def __init__(self, d):
        super().__init__(daemon=True)
        self.d, self.stop_flag, self.mib_s, self.peak_slots = d, False, 0.0, 0
        self.last = None
        self.timeline = []

    def run(self):
        start = next_point = creates0 = s = None
        while not self.stop_flag:
            try:
                s = harness.read_json(self.d.tpl("default", "stats"))
            except OSError:
                break
            now = time.monotonic()
            slots = s["warm"] + s["preparing"]
            self.peak_slots = max(self.peak_slots, slots)
            if self.last is not None:
                t0, mib0 = self.last
                self.mib_s += mib0 * (now - t0)
            self.last = (now, slots * s["slot_mib"])
            if start is None:
                start, next_point, creates0 = now, now, s["creates"]
            if now >= next_point:
                self.point(now - start, s, creates0)
                creates0 = s["creates"]
                while next_point <= now:  # a slow read skips points rather than bunching them
                    next_point += TIMELINE_S
            time.sleep(0.25)
        if s is not None and s["creates"] != creates0:
            self.point(time.monotonic() - start, s, creates0)  # the creates after the last point

    def point(self, t, s, creates0):
        self.timeline.append([round(t, 2), s["target"], s["warm"], s["creates"] - creates0])


def burst(d, k, tag):
    names = ["%s%d" % (tag, i) for i in range(k)]
    for n in names:
        d.create(n)
    hits = 0
    for n in names:
        st = d.wait_ready(n)
        hits += st["path"] == "warm"
    for n in names:
        d.destroy(n)
    return hits


def replay(d, episodes, gap_after_last):
    """Returns (creates, hits, seconds)."""
    creates = hits = 0
    t0 = time.monotonic()
    for e in range(episodes):
        start = time.monotonic()
        for b in range(BURSTS):
            due = start + b * EVERY
            time.sleep(max(0.0, due - time.monotonic()))
            hits += burst(d, SIZE, "e%db%d_" % (e, b))
            creates += SIZE
        log("  episode %d: %d/%d warm so far" % (e + 1, hits, creates))
        if e < episodes - 1 or gap_after_last:
            time.sleep(GAP)
    return creates, hits, time.monotonic() - t0


def run(extra, episodes, gap_after_last, wait_pool=None):
    d = harness.Daemon(pool=None, extra_args=extra).start()
    try:
        if wait_pool:
            d.wait_pool(wait_pool, timeout=120)
        else:
            harness.wait_for(lambda: harness.read_json(d.tpl("default", "stats"))["warm"] >= 1, 60,
                             "the first slot")
        s = Sampler(d)
        s.start()
        creates, hits, secs = replay(d, episodes, gap_after_last)
        s.stop_flag = True
        s.join()
        st = harness.read_json(d.tpl("default", "stats"))
    except BaseException:
        d.force_cleanup()
        raise
    d.stop()
    return creates, hits, secs, s.mib_s, s.peak_slots, st, s.timeline


def main():
    reason = harness.missing_capability()
    if reason:
        log("bench adaptive: skipped: %s" % reason)
        return 77
    log("adaptive: %d episodes x %d bursts of %d every %.0f s, gaps %.0f s, idle decay %d s"
        % (EPISODES, BURSTS, SIZE, EVERY, GAP, DECAY))
    a_creates, a_hits, a_secs, a_mib_s, a_peak, a_st, a_timeline = run(
        ["--pool", "auto", "--pool-idle-decay", str(DECAY)], EPISODES, True)
    log("fixed: --pool %d, one episode" % SIZE)
    f_creates, f_hits, f_secs, f_mib_s, f_peak, f_st, _ = run(["--pool", str(SIZE)], 1, False, wait_pool=SIZE)
    f_scaled = f_mib_s / f_secs * a_secs
    out = {
        "bench": "adaptive", "trace": "bursty",
        "episodes": EPISODES, "bursts": BURSTS, "burst_size": SIZE, "every_s": EVERY, "gap_s": GAP,
        "idle_decay_s": DECAY, "creates": a_creates,
        "hit_rate": round(a_hits / a_creates, 4), "slot_mib_s": round(a_mib_s),
        "peak_slots": a_peak, "slot_mib": a_st["slot_mib"], "misses": a_st["misses"],
        "fixed_depth": SIZE, "fixed_hit_rate": round(f_hits / f_creates, 4),
        "fixed_slot_mib_s": round(f_scaled), "fixed_scaled": True,
        "ratio": round(a_mib_s / f_scaled, 3) if f_scaled else None,
        "seconds": round(a_secs, 1),
        "timeline": a_timeline,
    }
    log("%-10s %9s %12s %6s" % ("pool", "hit rate", "slot-MiB-s", "peak"))
    log("%-10s %9.3f %12.0f %6d" % ("adaptive", out["hit_rate"], a_mib_s, a_peak))
    log("%-10s %9.3f %12.0f %6d" % ("fixed %d" % SIZE, out["fixed_hit_rate"], f_scaled, f_peak))
    log("ratio adaptive/fixed slot-MiB-s: %s (target <= 0.70 at hit rate >= 0.95)" % out["ratio"])
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
