#!/usr/bin/env python3
"""Builds BENCHMARKS.md from one or more `rtmpq bench` results folders (runs with different
clip lengths or transports, e.g. the blackout profiles' 40 s clips): copies the charts into
docs/bench/ and puts the tables between the hand-written explanation blocks.

`--append` keeps the results already in BENCHMARKS.md and docs/bench/ (an earlier stop's runs)
and adds the folders' after them under `--heading TEXT` (a section of that heading already
there is replaced, with its runs in docs/bench/results.json and its charts: the same command
run twice changes nothing); `--soak FILE` and `--capacity FILE` add the figures of `rtmpq soak`
(soak.json) and `rtmpq capacity` (capacity.json)."""
import json, pathlib, re, shutil, sys

args = sys.argv[1:]
append = "--append" in args
soak = capacity = None
heading = "This stop's runs: trust (flood, interop cases, soak, capacity)"
folders = []
i = 0
while i < len(args):
    a = args[i]
    if a == "--soak":
        soak, i = pathlib.Path(args[i + 1]), i + 2
    elif a == "--capacity":
        capacity, i = pathlib.Path(args[i + 1]), i + 2
    elif a == "--append":
        i += 1
    elif a == "--heading":
        heading, i = args[i + 1], i + 2
    else:
        folders.append(pathlib.Path(a))
        i += 1
if not folders and not append:
    folders = [pathlib.Path("bench-results")]
root = pathlib.Path(__file__).resolve().parent.parent
charts = root / "docs" / "bench"
intro = (root / "docs" / "bench-intro.md").read_text()
outro = (root / "docs" / "bench-outro.md").read_text()
all_runs, all_profiles = [], []
parts = [intro, "\n## Results\n\n"]
first_late = 1
if append:
    old = (root / "BENCHMARKS.md").read_text()
    start = old.index("\n## Results\n\n") + len("\n## Results\n\n")
    end = old.index(outro.splitlines()[0])
    kept, _, replaced = old[start:end].partition(f"\n## {heading}\n")
    parts.append(kept.rstrip() + "\n\n")
    # A section of this heading already there is replaced whole: its runs leave results.json
    # and its charts leave docs/bench/ (running the same command twice changes nothing).
    for chart in set(re.findall(r"docs/bench/([\w.:-]+\.svg)", replaced)):
        if f"docs/bench/{chart}" not in kept:
            (charts / chart).unlink(missing_ok=True)
    data = json.loads((charts / "results.json").read_text())
    all_runs = [r for r in data["runs"] if r.get("section") != heading]
    all_profiles = [p for p in data["profiles"] if p.get("section") != heading]
    # After the highest number there (earlier sections may have left gaps).
    first_late = max((int(f.stem.rsplit("-", 1)[1]) for f in charts.glob("late-ratio-*.svg")), default=0) + 1
    if folders or soak or capacity:
        parts.append(f"## {heading}\n\n")
else:
    if charts.exists():
        shutil.rmtree(charts)
    charts.mkdir(parents=True)
for i, results in enumerate(folders):
    data = json.loads((results / "results.json").read_text())
    if append:
        for entry in data["runs"] + data["profiles"]:
            entry["section"] = heading
    all_runs += data["runs"]
    all_profiles += data["profiles"]
    # Appended runs' charts carry their folder's name: a profile run again (clean) keeps
    # the earlier run's chart.
    suffix = f"-{results.name}" if append else ""
    for svg in results.glob("latency-*.svg"):
        shutil.copy(svg, charts / f"{svg.stem}{suffix}.svg")
    late = f"late-ratio-{first_late + i}.svg"
    shutil.copy(results / "late-ratio.svg", charts / late)
    if append:
        # Which command made these tables (the folders are named in "How to reproduce").
        parts.append(f"*The runs in `{results.name}`:*\n\n")
    parts.append(f"![late ratio]({'docs/bench/' + late})\n\n")
    for section in (results / "results.md").read_text().split("### ")[1:]:
        name = section.split(" ", 1)[0]
        parts.append("### " + section.rstrip() + "\n\n")
        parts.append(f"![latency over time, {name}](docs/bench/latency-{name}{suffix}.svg)\n\n")
if soak:
    r = json.loads(soak.read_text())
    parts.append(
        f"### soak — {r['sessions']} sessions of {r['video_kbps']} kbit/s built-in media through one edge and one gateway to nginx, {r['seconds']:.0f} s on loopback\n\n"
        "| hop | memory after warm-up → end | peak | descriptors after warm-up → end | sessions ended |\n|---|---|---|---|---|\n"
    )
    ended = dict((n, e) for n, e in r["ended"])
    for (name, growth), (_, fd0, fd1) in zip(r["rss_growth"], r["fds"]):
        samples = dict((n, s) for n, s in r["samples"])[name]
        peak = max(s["rss"] for s in samples) / 1048576
        parts.append(
            f"| {name} | {growth * 100:+.1f} % | {peak:.1f} MiB | {fd0} → {fd1} | {ended.get(name)} |\n"
        )
    parts.append(
        f"\nFrames {r['frames_received']}/{r['frames_sent']}, late beyond 500 ms: {r['late_frames']}, latest {r['max_latency_ms']:.0f} ms; publishers finished {r['published']}/{r['sessions']}. Warm-up {r['warmup_seconds']:.0f} s; memory growth compares the median of the samples just after the warm-up with the median of the last ones.\n\n"
    )
if capacity:
    r = json.loads(capacity.read_text())
    parts.append(
        f"### capacity — sessions of {r['video_kbps']} kbit/s built-in media on loopback to nginx, through an edge and a gateway, and through a plain TCP relay\n\n"
        "| path | sessions (published) | carried | frames | late > 500 ms | latest | CPU (cores) | CPU per Gbit/s |\n|---|---|---|---|---|---|---|---|\n"
    )
    for s in r["steps"]:
        cpu = ", ".join(f"{n} {c:.2f}" for n, c in s["cpu_cores"])
        per = ", ".join(f"{n} {c:.2f}" for n, c in s["cores_per_gbps"])
        parts.append(
            f"| {s['path']} | {s['sessions']} ({s.get('published', s['sessions'])}) | {s['mbps']:.0f} Mbit/s | {s['frames_received']}/{s['frames_sent']} | {s['late_frames']} | {s['max_latency_ms']:.0f} ms | {cpu} | {per} |\n"
        )
    parts.append(
        f"\nrtmpq carried **{r['rtmpq_capacity']} sessions** with no frame late beyond 500 ms (a step counts when every publisher published to the end, no frame was late and at least 99 % arrived).\n\n"
    )
(charts / "results.json").write_text(
    json.dumps({"profiles": all_profiles, "runs": all_runs}, indent=1)
)
parts.append(outro)
(root / "BENCHMARKS.md").write_text("".join(parts))
print(f"BENCHMARKS.md: {len(all_runs)} runs over {len(all_profiles)} profiles")
