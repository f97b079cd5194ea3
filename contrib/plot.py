#!/usr/bin/python3
"""
Draws the benchmarks' figures as SVG from their JSON lines.

    contrib/plot.py [-o DIR] [--machine TEXT] FILE.jsonl...

FILE is the stdout of `contrib/bench.sh NAME...` (one JSON object per line);
several files may be given, e.g. one per benchmark run. Written to DIR
(default docs/plots), each only when its lines are there:

  create.svg    create latency by path (warm, restore, restore_spawn, cold) from the raw
                samples (`samples_ms` of the create lines): empirical CDFs on a
                log time axis with p50 and p99 marked (nearest-rank, as
                bench.sh), and box plots of the same samples below.
  adaptive.svg  the adaptive benchmark's timeline: the pool's target and its
                warm slots against demand (creates per interval) over the run.
                One figure per adaptive line: adaptive.svg, adaptive-2.svg, ...
  density.svg   create p50 and PSS against the number of idle sandboxes,
                from {"bench":"density","steps":[{"idle":N,"create_p50_ms":..,
                "pss_mib":..,"pss_mib_total":..},...]} (bench.sh's: the idle
                VMMs' median PSS and their sum) or one {"bench":"density",
                "idle":N,...} line per step ("create_p99_ms" is drawn when
                present). No density line: skipped, said on stderr.

The machine is noted in the titles from a line's "machine" field, or from
--machine when the lines have none (bench.sh's lines do not say it yet).
Output is deterministic: the same input gives byte-identical files.

Exit status: 0 when at least one figure was written; 2 for a usage error, a
file that cannot be read, or a file with no line this script can draw.
Uses Debian's python3-matplotlib (Agg backend, no network); run it with
/usr/bin/python3, whose dist-packages hold it.
"""
import argparse
import json
import math
import os
import sys

PATHS = ("warm", "restore", "restore_spawn", "cold")
COLOURS = {"warm": "#d95f02", "restore": "#1b9e77", "restore_spawn": "#e7298a", "cold": "#7570b3"}  # ColorBrewer Dark2
STYLES = ("-", "--", ":", "-.")  # one per input file when several runs are drawn together


def fail(msg):
    print("plot: error: %s" % msg, file=sys.stderr)
    sys.exit(2)


def note(msg):
    print("plot: %s" % msg, file=sys.stderr)


def nearest_rank(sorted_vals, p):
    """The ceil(p/100 * n)-th smallest value (1-based), as contrib/bench.sh."""
    k = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[k - 1]


def number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def usable(o):
    """Which figure a JSON line feeds, or None."""
    b = o.get("bench")
    samples = o.get("samples_ms")
    if (b == "create" and o.get("path") in PATHS and isinstance(samples, list) and samples
            and all(number(x) and x > 0 for x in samples)):  # > 0: a log axis
        return "create"
    timeline = o.get("timeline")
    if (b == "adaptive" and isinstance(timeline, list) and timeline
            and all(isinstance(r, list) and len(r) == 4 and all(number(x) for x in r) for r in timeline)):
        return "adaptive"
    if b == "density" and (isinstance(o.get("steps"), list) or density_x(o) is not None):
        return "density"
    return None


def load(files):
    """{"create": [(file, line)], "adaptive": [...], "density": [...]}, machine or None."""
    got = {"create": [], "adaptive": [], "density": []}
    machine = None
    for fn in files:
        try:
            with open(fn, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            fail("%s: %s" % (fn, e.strerror or e))
        except UnicodeDecodeError:
            fail("%s: not text (expected JSON lines from contrib/bench.sh)" % fn)
        n_use = n_bad = 0
        old_create = old_adaptive = False
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                o = json.loads(line)
            except ValueError:
                n_bad += 1
                continue
            if not isinstance(o, dict):
                n_bad += 1
                continue
            if not machine and isinstance(o.get("machine"), str):
                machine = o["machine"]
            kind = usable(o)
            if kind:
                got[kind].append((fn, o))
                n_use += 1
            elif o.get("bench") == "create" and o.get("path") in PATHS and "p50_ms" in o:
                old_create = True
            elif o.get("bench") == "adaptive":
                old_adaptive = True
        if n_bad:
            note("%s: %d line(s) not JSON objects, ignored" % (fn, n_bad))
        if not n_use:
            why = []
            if old_create:
                why.append("its create lines have no \"samples_ms\" (made before bench.sh kept the raw samples)")
            if old_adaptive:
                why.append("its adaptive line has no \"timeline\" (made before bench_adaptive.py kept one)")
            fail("%s: no line to draw: expected create lines with \"samples_ms\", an adaptive line with "
                 "\"timeline\" or density lines (the stdout of contrib/bench.sh create|adaptive)%s"
                 % (fn, "; " + "; ".join(why) if why else ""))
    return got, machine


def setup():
    try:
        import matplotlib
    except ImportError:
        fail("matplotlib is missing: install Debian's python3-matplotlib (contrib/deps.sh) and run this "
             "script with /usr/bin/python3")
    matplotlib.use("Agg")
    matplotlib.rcParams.update({
        "svg.hashsalt": "emberfs-plot",  # fixed ids: the same input gives the same file
        "svg.fonttype": "path",          # text as outlines: looks the same in every viewer
        "font.size": 9,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
    })
    import matplotlib.pyplot as plt
    return plt


def save(plt, fig, outdir, name):
    path = os.path.join(outdir, name)
    fig.savefig(path, format="svg", metadata={"Date": None, "Creator": "contrib/plot.py"})
    plt.close(fig)
    note("wrote %s" % path)


def subtitle(*parts):
    return "; ".join(p for p in parts if p)


def titled(sub):
    """A title's second line, or nothing."""
    return "\n" + sub if sub else ""


def ms_axis(ax):
    """A log axis labelled in plain milliseconds: 10, 20, 50, 100, ..."""
    from matplotlib.ticker import FuncFormatter, LogLocator
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "%g" % v))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2, 3, 5)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: "%g" % v if ("%g" % v)[0] in "25" else ""))


def plot_create(plt, lines, outdir, machine):
    import numpy as np
    runs = sorted({fn for fn, _ in lines})
    series = []  # (path, label, sorted samples, line style); several runs: one style each
    several = len(lines) > len({o["path"] for _, o in lines})
    for path in PATHS:
        seen = {}  # file -> runs of this path in it so far
        for fn, o in lines:
            if o["path"] != path:
                continue
            v = sorted(float(x) for x in o["samples_ms"])
            seen[fn] = seen.get(fn, 0) + 1
            label = path
            if several:
                label = "%s (%s%s)" % (path, os.path.basename(fn), ", run %d" % seen[fn] if seen[fn] > 1 else "")
            series.append((path, label, v, STYLES[(runs.index(fn) + seen[fn] - 1) % len(STYLES)]))
    fig, (ax, bx) = plt.subplots(2, 1, sharex=True, figsize=(10.5, 6.2), gridspec_kw={"height_ratios": [2.2, 1]})
    for path, label, v, style in series:
        n = len(v)
        y = np.arange(1, n + 1) / n
        ax.step(v, y, where="post", color=COLOURS[path], ls=style, lw=1.6,
                label="%s, n=%d: p50 %s ms, p99 %s ms" % (label, n, fmt_ms(nearest_rank(v, 50)),
                                                          fmt_ms(nearest_rank(v, 99))))
        ax.plot(v, y, "o", color=COLOURS[path], ms=2.5, alpha=0.6)
        for p, marker in ((50, "D"), (99, "^")):
            x = nearest_rank(v, p)
            ax.plot([x], [math.ceil(p / 100.0 * n) / n], marker, color=COLOURS[path], ms=7, mec="black", mew=0.6)
            ax.annotate("p%d %s" % (p, fmt_ms(x)), (x, math.ceil(p / 100.0 * n) / n), textcoords="offset points",
                        xytext=(6, -11 if p == 50 else 3), fontsize=7.5, color=COLOURS[path])
    ax.plot([], [], "D", color="grey", mec="black", mew=0.6, label="p50 (nearest rank)")
    ax.plot([], [], "^", color="grey", mec="black", mew=0.6, label="p99 (nearest rank)")
    ax.set_ylabel("fraction of creates at or below")
    ax.set_ylim(0, 1.04)
    # outside the axes: wherever the curves fall, it hides none of them
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5, frameon=False)
    ax.set_title("Create latency by path: mkdir until `wait` answers ready\n"
                 + subtitle("empirical CDF of the raw samples, timed by the caller", machine), fontsize=10)

    rng = np.random.RandomState(0)  # the jitter of the points, fixed
    data = [v for _, _, v, _ in series]
    pos = list(range(len(series), 0, -1))
    bp = bx.boxplot(data, positions=pos, vert=False, widths=0.55, whis=(0, 100), patch_artist=True,
                    medianprops={"color": "black"})
    for patch, (path, _, _, _) in zip(bp["boxes"], series):
        patch.set_facecolor(COLOURS[path])
        patch.set_alpha(0.35)
    for p, (path, _, v, _) in zip(pos, series):
        bx.plot(v, p + rng.uniform(-0.18, 0.18, len(v)), "o", color=COLOURS[path], ms=2.5, alpha=0.8)
    bx.set_yticks(pos)
    bx.set_yticklabels([label for _, label, _, _ in series])
    bx.set_xlabel("create latency (ms, log scale)")
    bx.set_title("box: quartiles, whiskers min to max, line the median; dots the samples", fontsize=8)
    ms_axis(bx)
    lo, hi = min(v[0] for _, _, v, _ in series), max(v[-1] for _, _, v, _ in series)
    bx.set_xlim(lo / 1.3, hi * 1.6)  # room for the p99 labels
    fig.tight_layout()
    save(plt, fig, outdir, "create.svg")
    return 1


def fmt_ms(x):
    return "%.0f" % x if x >= 100 else "%.1f" % x


def changes(t, v):
    """The points of a step function where its value changes, and its last point:
    drawn with where="post" the same steps, in a fraction of the SVG."""
    import numpy as np
    keep = np.ones(len(v), dtype=bool)
    keep[1:-1] = v[1:-1] != v[:-2]
    return t[keep], v[keep]


def plot_adaptive(plt, o, outdir, name, machine):
    import numpy as np
    tl = np.array(o["timeline"], dtype=float)
    t, target, warm, creates = tl[:, 0], tl[:, 1], tl[:, 2], tl[:, 3]
    dt = round(float(np.median(np.diff(t))), 1) if len(t) > 1 else 1.0
    fig, (ax, bx) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.6), gridspec_kw={"height_ratios": [2, 1]})
    # warm slots shaded beneath, the target drawn over them: where they agree both stay visible
    ax.fill_between(*changes(t, warm), step="post", color="#d95f02", alpha=0.35, lw=0, label="warm slots")
    ax.step(*changes(t, target), where="post", color="#7570b3", lw=1.6, label="target (the controller's depth)")
    ax.set_ylabel("slots")
    top = max(target.max(), warm.max(), 1)
    ax.set_ylim(-0.2, top + 1)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    trace = "%s episodes x %s bursts of %s every %g s, gaps %g s, idle decay %s s" % (
        o.get("episodes", "?"), o.get("bursts", "?"), o.get("burst_size", "?"), o.get("every_s", 0),
        o.get("gap_s", 0), o.get("idle_decay_s", "?"))
    res = []
    if number(o.get("hit_rate")):
        res.append("hit rate %.3f" % o["hit_rate"])
        if number(o.get("fixed_hit_rate")):
            res[-1] += " (fixed %s: %.3f)" % (o.get("fixed_depth", "?"), o["fixed_hit_rate"])
    if number(o.get("ratio")):
        res.append("slot-MiB-s %.0f%% of the fixed pool's" % (o["ratio"] * 100))
    ax.set_title("Adaptive warm pool: target and warm slots against demand\n"
                 + subtitle(trace, machine) + titled(", ".join(res)), fontsize=9.5)
    busy = creates > 0  # no zero-height lines: they would only make the file larger
    bx.vlines(t[busy], 0, creates[busy], color="#1b9e77", lw=1.2)
    bx.set_ylabel("creates per %g s" % dt)
    bx.set_ylim(0, max(creates.max(), 1) * 1.15)
    bx.yaxis.get_major_locator().set_params(integer=True)
    bx.set_xlabel("time since the start of the trace (s)")
    bx.set_xlim(t[0] - dt, t[-1] + dt)
    fig.tight_layout()
    save(plt, fig, outdir, name)
    return 1


def density_x(o):
    return first(o, "idle", "idle_sandboxes", "sandboxes", "n")


def first(o, *keys):
    """The first of keys whose value is a number, or None."""
    for k in keys:
        if number(o.get(k)):
            return o[k]
    return None


def plot_density(plt, lines, outdir, machine):
    steps = []
    for _, o in lines:
        if isinstance(o.get("steps"), list):
            steps.extend(s for s in o["steps"] if isinstance(s, dict))
        else:
            steps.append(o)
    pts = []  # (idle, create p50, create p99, PSS of all, PSS per sandbox)
    for s in steps:
        x = density_x(s)
        if x is not None:
            pts.append((x, first(s, "create_p50_ms", "p50_ms"), first(s, "create_p99_ms", "p99_ms"),
                        first(s, "pss_mib_total", "pss_total_mib", "host_pss_mib"),
                        first(s, "pss_mib", "pss_per_sandbox_mib", "pss_each_mib")))
    pts.sort(key=lambda p: p[0])
    has_ms = any(p[1] is not None for p in pts)
    has_pss = any(p[3] is not None or p[4] is not None for p in pts)
    if not has_ms and not has_pss:
        note("density: the density lines have no step with an idle count and a create p50 or a PSS: "
             "density.svg skipped")
        return 0
    fig, axes = plt.subplots(has_ms + has_pss, 1, sharex=True, figsize=(8, 2.8 * (has_ms + has_pss) + 0.6),
                             squeeze=False)
    axes = list(axes[:, 0])
    axes[-1].set_xlabel("idle sandboxes")

    def line(axis, col, colour, label, style="o-"):
        xy = [(p[0], p[col]) for p in pts if p[col] is not None]
        if xy:
            axis.plot([a for a, _ in xy], [b for _, b in xy], style, color=colour, ms=4, label=label)
        return bool(xy)

    axes[0].set_title("Density: create latency and memory against idle sandboxes"
                      + titled(subtitle(lines[0][1].get("note"), machine)), fontsize=10)
    if has_ms:
        ax = axes.pop(0)
        line(ax, 1, "#d95f02", "create p50")
        line(ax, 2, "#d95f02", "create p99", "^--")
        ax.set_ylabel("create latency (ms)")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8)
    if has_pss:
        bx = axes.pop(0)
        total = line(bx, 3, "#7570b3", "PSS of all sandboxes")
        if any(p[4] is not None for p in pts):
            cx = bx.twinx() if total else bx
            line(cx, 4, "#1b9e77", "PSS per idle sandbox (median)", "s--")
            cx.set_ylabel("PSS per idle sandbox (MiB)")
            cx.set_ylim(bottom=0)
            cx.grid(total is False)
            cx.legend(loc="lower right", fontsize=8)
        if total:
            bx.set_ylabel("PSS, all sandboxes (MiB)")
            bx.set_ylim(bottom=0)
            bx.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save(plt, fig, outdir, "density.svg")
    return 1


def main():
    ap = argparse.ArgumentParser(description="Draws SVG plots from contrib/bench.sh's JSON lines.")
    ap.add_argument("-o", "--outdir", default="docs/plots", help="where the SVGs go (default docs/plots)")
    ap.add_argument("--machine", help="the machine, noted in the titles when no line says it (e.g. '2-core TCG')")
    ap.add_argument("files", nargs="+", metavar="FILE.jsonl")
    a = ap.parse_args()
    got, machine = load(a.files)
    machine = machine or a.machine
    plt = setup()
    try:
        os.makedirs(a.outdir, exist_ok=True)
    except OSError as e:
        fail("%s: %s" % (a.outdir, e.strerror or e))
    written = 0
    if got["create"]:
        written += plot_create(plt, got["create"], a.outdir, machine)
    else:
        note("create: no create line with \"samples_ms\": create.svg skipped")
    for i, (_, o) in enumerate(got["adaptive"]):
        written += plot_adaptive(plt, o, a.outdir, "adaptive.svg" if i == 0 else "adaptive-%d.svg" % (i + 1),
                                 machine)
    if not got["adaptive"]:
        note("adaptive: no adaptive line with \"timeline\": adaptive.svg skipped")
    if got["density"]:
        written += plot_density(plt, got["density"], a.outdir, machine)
    else:
        note("density: no {\"bench\":\"density\",...} line with per-step data: density.svg skipped")
    if not written:
        fail("nothing drawn: no line in %s had data to plot" % ", ".join(a.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
