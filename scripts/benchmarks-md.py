#!/usr/bin/env python3
"""Builds BENCHMARKS.md from an `rtmpq bench` results folder: copies the charts into
docs/bench/ and puts the table between the hand-written explanation blocks."""
import json, pathlib, shutil, sys

results = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
root = pathlib.Path(__file__).resolve().parent.parent
charts = root / "docs" / "bench"
charts.mkdir(parents=True, exist_ok=True)
for svg in results.glob("*.svg"):
    shutil.copy(svg, charts / svg.name)
shutil.copy(results / "results.json", charts / "results.json")
data = json.loads((results / "results.json").read_text())
intro = (root / "docs" / "bench-intro.md").read_text()
outro = (root / "docs" / "bench-outro.md").read_text()
parts = [intro, "\n## Results\n\n![late ratio](docs/bench/late-ratio.svg)\n\n"]
table = (results / "results.md").read_text().split("### ")
for section in table[1:]:
    name = section.split(" ", 1)[0]
    parts.append("### " + section.rstrip() + "\n\n")
    parts.append(f"![latency over time, {name}](docs/bench/latency-{name}.svg)\n\n")
parts.append(outro)
(root / "BENCHMARKS.md").write_text("".join(parts))
print(f"BENCHMARKS.md: {len(data['runs'])} runs over {len(data['profiles'])} profiles")
