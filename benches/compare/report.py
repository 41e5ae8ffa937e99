#!/usr/bin/env python3
"""Turns compare.csv (written by run.sh) into compare.md and a gnuplot bar chart.

Every ratio compares tools measured in the same run: `x fastest peer` is a row's wall time
divided by the fastest peer's (restic, borg, rustic) for the same format and step, so
vmvault's 0.25 means four times faster; `x smallest peer` does the same for repository
size. The bound rows divide the allocated bytes by the cores times the single-core rates
machine_limits measured in the same run."""

import argparse
import csv
import statistics
import datetime
import os
import platform

PEERS = ("restic", "borg", "rustic")
STEPS = ("backup v1", "backup v2", "backup v3", "restore v3")


def mib(b):
    return float(b) / (1 << 20)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


NUMERIC = ("wall_s", "user_s", "sys_s", "peak_rss_mib", "repo_bytes", "restored_allocated_bytes")


def median_rows(raw):
    """One row per (format, tool, step): the median of each number over the rounds, plus
    `wall_min`/`wall_max`. Returns the rows (in first-seen order) and the round count."""
    groups = {}
    for r in raw:
        groups.setdefault((r["format"], r["tool"], r["step"]), []).append(r)
    out = []
    for (fmt, tool, step), rs in groups.items():
        m = {"format": fmt, "tool": tool, "step": step}
        for k in NUMERIC:
            vals = sorted(float(r[k]) for r in rs if r.get(k, "") != "")
            if not vals:
                m[k] = ""
            elif k == "peak_rss_mib":
                m[k] = str(round(max(vals)))  # the worst round: a memory claim is a bound
            elif k.endswith("_s"):
                m[k] = f"{statistics.median(vals):.2f}"
            else:
                m[k] = str(round(statistics.median(vals)))
        walls = [float(r["wall_s"]) for r in rs]
        m["wall_min"], m["wall_max"], m["n"] = min(walls), max(walls), len(rs)
        out.append(m)
    rounds = max((len(rs) for rs in groups.values()), default=1)
    return out, rounds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("limits")
    ap.add_argument("--cores", type=int, required=True)
    ap.add_argument("--allocated", type=int, required=True)
    ap.add_argument("--logical", type=int, required=True)
    ap.add_argument("--seq-read", type=float, default=0.0)
    ap.add_argument("--cold", default="yes")
    ap.add_argument("--corpus", default="")
    ap.add_argument("--pages", default="")
    ap.add_argument("--sizes", default="")
    ap.add_argument("--versions", default="")
    ap.add_argument("--md", required=True)
    ap.add_argument("--gnuplot", required=True)
    a = ap.parse_args()

    rows, rounds = median_rows(list(csv.DictReader(open(a.csv))))
    lim = {}
    for line in open(a.limits):
        k, v = line.split()
        lim[k] = float(v)
    alloc_mb = a.allocated / 1e6
    # The bound is the zstd (+ BLAKE3) work of what vmvault compresses: blobs of
    # consecutive chunks (format version 2), else its chunks; older limit files only have
    # the 128 KiB-block rates.
    bound_zstd = alloc_mb / (a.cores * lim.get("zstd_blobs", lim.get("zstd_chunks", lim["zstd"])))
    bound_zh = alloc_mb / (a.cores * lim.get("zstd_blake3_blobs",
                                             lim.get("zstd_blake3_chunks", lim["zstd_blake3"])))
    block_zh = alloc_mb / (a.cores * lim["zstd_blake3"])

    def get(fmt, tool, step):
        for r in rows:
            if r["format"] == fmt and r["tool"] == tool and r["step"] == step:
                return r
        return None

    out = []
    w = out.append
    runs = "one run" if rounds == 1 else f"one run of {rounds} rounds, medians"
    w(f"# vmvault against restic, borg and rustic: {runs}, {datetime.datetime.utcnow():%Y-%m-%dT%H:%MZ}")
    w("")
    w(f"Machine: {a.cores} cores ({cpu_model()}), load average at the end "
      f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; page cache dropped before every step: {a.cold}.")
    w(f"Tools: {a.versions}; peers with their defaults plus zstd level {int(lim.get('zstd_level', 3))} "
      f"(restic `auto`, borg `--compression zstd,3`, rustic default), all with encryption.")
    w(f"Corpus: {a.corpus}; GPT image of {a.logical / 2**30:.0f} GiB logical, "
      f"{mib(a.allocated):.0f} MiB allocated (EFI FAT32 + ext4); v2 = a day of changes "
      f"(packages unpacked, logs, an SQLite database), v3 = v2 + {a.pages} random 4 KiB page writes.")
    if a.sizes:
        w("Files on disk (allocated MiB): " + ", ".join(
            f"{k} {mib(v):.0f}" for k, v in (s.split("=") for s in a.sizes.split())))
    w("")
    w("Regenerate: `sudo REPEAT=3 benches/compare/run.sh` (see the script's header for knobs).")
    w("")

    w("## Summary: how many times faster vmvault is than the fastest peer, and its repository size relative to the smallest peer's")
    w("")
    w("| format | " + " | ".join(STEPS) + " |")
    w("|---|" + "---|" * len(STEPS))
    for fmt in dict.fromkeys(r["format"] for r in rows):
        cells = []
        for step in STEPS:
            v = get(fmt, "vmvault", step)
            peers = [p for p in (get(fmt, t, step) for t in PEERS) if p]
            if not v or not peers:
                cells.append("")
                continue
            speed = min(float(p["wall_s"]) for p in peers) / float(v["wall_s"])
            size = int(v["repo_bytes"]) / min(int(p["repo_bytes"]) for p in peers)
            pace = f"{speed:.1f}x faster" if speed >= 1 else f"{1 / speed:.1f}x slower"
            cells.append(f"{pace}, repo {size:.2f}x")
        w(f"| {fmt} | " + " | ".join(cells) + " |")
    w("")

    for fmt in dict.fromkeys(r["format"] for r in rows):
        w(f"## {fmt}")
        w("")
        w("| step | tool | wall s" + (" (range)" if rounds > 1 else "") + " | CPU s | peak RSS MiB | repo MiB | wall x fastest peer | repo x smallest peer |")
        w("|---|---|---|---|---|---|---|---|")
        for step in STEPS:
            peers = [get(fmt, t, step) for t in PEERS]
            peers = [p for p in peers if p]
            best_wall = min((float(p["wall_s"]) for p in peers), default=None)
            best_repo = min((int(p["repo_bytes"]) for p in peers), default=None)
            for tool in ("vmvault",) + PEERS:
                r = get(fmt, tool, step)
                if not r:
                    continue
                wall = float(r["wall_s"])
                cpu = float(r["user_s"]) + float(r["sys_s"])
                rw = f"{wall / best_wall:.2f}" if best_wall else ""
                rr = f"{int(r['repo_bytes']) / best_repo:.2f}" if best_repo else ""
                name = f"**{tool}**" if tool == "vmvault" else tool
                extra = ""
                if step.startswith("restore") and r.get("restored_allocated_bytes"):
                    extra = f" (output {mib(r['restored_allocated_bytes']):.0f} MiB allocated)"
                spread = f" ({r['wall_min']:.2f}–{r['wall_max']:.2f})" if r["n"] > 1 else ""
                w(f"| {step}{extra} | {name} | {wall:.2f}{spread} | {cpu:.2f} | {r['peak_rss_mib']} | "
                  f"{mib(r['repo_bytes']):.1f} | {rw} | {rr} |")
        w("")

    w("## The machine's limits (same run, one core, v1's allocated data)")
    w("")
    w("| stage | MB/s per core |")
    w("|---|---|")
    level = int(lim.get('zstd_level', 3))
    for k, label in (("zstd", f"zstd level {level}, 128 KiB blocks"),
                     ("blake3_keyed", "keyed BLAKE3, 128 KiB blocks"),
                     ("aes256gcm", "AES-256-GCM, 128 KiB blocks"),
                     ("fastcdc", "FastCDC (vmvault's chunker, cut + zero scan + name)"),
                     ("zstd_blake3", "zstd + BLAKE3, 128 KiB blocks"),
                     ("zstd_chunks", f"zstd level {level}, vmvault's chunks"),
                     ("zstd_blake3_chunks", "zstd + BLAKE3, vmvault's chunks, each compressed alone"),
                     ("zstd_blobs", f"zstd level {level}, vmvault's blobs (runs of new chunks up to 4 MiB)"),
                     ("zstd_blake3_blobs", "zstd + BLAKE3, vmvault's blobs (compression/hash bound)")):
        if k in lim:
            w(f"| {label} | {lim[k]:.0f} |")
    if a.seq_read:
        w(f"| sequential read, cold (dd) | {a.seq_read:.0f} (all cores) |")
    w("")
    full = get("raw", "vmvault", "backup v1")
    if full:
        fw = float(full["wall_s"])
        w(f"Bounds for the full backup of {mib(a.allocated):.0f} MiB allocated on {a.cores} cores: "
          f"zstd alone {bound_zstd:.2f} s, zstd + BLAKE3 {bound_zh:.2f} s. vmvault took {fw:.2f} s: "
          f"**{fw / bound_zh:.2f}x the compression/hash bound**, {fw / bound_zstd:.2f}x the zstd bound "
          f"({fw / block_zh:.2f}x the compression/hash bound of 128 KiB blocks).")
        w("")
    s1 = get("raw", "vmvault", "backup v1 on 1 cores")
    sn = get("raw", "vmvault", f"backup v1 on {a.cores} cores")
    if s1 and sn and a.cores > 1:
        w(f"Scaling (raw v1, fresh repository, `taskset`): 1 core {float(s1['wall_s']):.2f} s, "
          f"{a.cores} cores {float(sn['wall_s']):.2f} s: **{float(s1['wall_s']) / float(sn['wall_s']):.2f}x**.")
        w("")

    open(a.md, "w").write("\n".join(out) + "\n")

    # Bar chart: wall time per step and tool, raw format.
    fmt = "raw"
    tools = [t for t in ("vmvault",) + PEERS if get(fmt, t, "backup v1")]
    if not tools:
        return
    with open(a.gnuplot + ".dat", "w") as f:
        f.write("step " + " ".join(tools) + "\n")
        for step in STEPS:
            vals = [get(fmt, t, step) for t in tools]
            f.write('"' + step + '" ' + " ".join(v["wall_s"] if v else "0" for v in vals) + "\n")
    base = os.path.basename(a.gnuplot)
    with open(a.gnuplot + ".gp", "w") as f:
        f.write(f"""set terminal pngcairo size 900,480 font "sans,11"
set output "{base}.png"
set title "VM disk backup and restore, {mib(a.allocated):.0f} MiB allocated of {a.logical / 2**30:.0f} GiB, {a.cores} cores (lower is better)"
set ylabel "wall time (s)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key top left
set grid ytics
set yrange [0:*]
plot for [i=2:{len(tools) + 1}] "{base}.dat" using i:xtic(1) title columnhead(i)
""")


if __name__ == "__main__":
    main()
