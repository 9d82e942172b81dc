#!/usr/bin/env python3
"""Builds BENCHMARKS.md from one or more `rtmpq bench` results folders (runs with different
clip lengths or transports, e.g. the blackout profiles' 40 s clips): copies the charts into
docs/bench/ and puts the tables between the hand-written explanation blocks."""
import json, pathlib, shutil, sys

folders = [pathlib.Path(a) for a in sys.argv[1:]] or [pathlib.Path("bench-results")]
root = pathlib.Path(__file__).resolve().parent.parent
charts = root / "docs" / "bench"
if charts.exists():
    shutil.rmtree(charts)
charts.mkdir(parents=True)
intro = (root / "docs" / "bench-intro.md").read_text()
outro = (root / "docs" / "bench-outro.md").read_text()
parts = [intro, "\n## Results\n\n"]
all_runs, all_profiles = [], []
for i, results in enumerate(folders):
    data = json.loads((results / "results.json").read_text())
    all_runs += data["runs"]
    all_profiles += data["profiles"]
    for svg in results.glob("latency-*.svg"):
        shutil.copy(svg, charts / svg.name)
    late = f"late-ratio-{i + 1}.svg"
    shutil.copy(results / "late-ratio.svg", charts / late)
    parts.append(f"![late ratio]({'docs/bench/' + late})\n\n")
    for section in (results / "results.md").read_text().split("### ")[1:]:
        name = section.split(" ", 1)[0]
        parts.append("### " + section.rstrip() + "\n\n")
        parts.append(f"![latency over time, {name}](docs/bench/latency-{name}.svg)\n\n")
(charts / "results.json").write_text(
    json.dumps({"profiles": all_profiles, "runs": all_runs}, indent=1)
)
parts.append(outro)
(root / "BENCHMARKS.md").write_text("".join(parts))
print(f"BENCHMARKS.md: {len(all_runs)} runs over {len(all_profiles)} profiles")
