//! Bench output: a Markdown table, JSON, and SVG charts (latency over time per profile, late
//! ratio by profile and transport). The charts are two simple kinds drawn by hand, which keeps
//! a plotting stack out of the build.

use std::fmt::Write as _;
use std::path::Path;

use crate::harness::{RunResult, BUDGETS_MS};
use crate::profiles::Profile;

const COLORS: [&str; 10] = [
    "#d62728", "#ff7f0e", "#9467bd", "#1f77b4", "#2ca02c", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v >= 10_000.0 {
        format!("{:.0} s", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// After each blackout, the time from the link's return to the first frame back at the
/// floor: `1.23 s`, `never`, or `–` without a blackout.
pub fn recovery_text(r: &RunResult) -> String {
    if r.recovery_seconds.is_empty() {
        return "–".into();
    }
    r.recovery_seconds
        .iter()
        .map(|s| s.map_or("never".into(), |s| format!("{s:.2} s")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Markdown table, one section per profile.
pub fn markdown(profiles: &[Profile], results: &[RunResult]) -> String {
    let mut md = String::new();
    for p in profiles {
        let rows: Vec<&RunResult> = results.iter().filter(|r| r.profile == p.name).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "### {} — {}\n", p.name, p.description);
        let _ = writeln!(
            md,
            "| transport | video frames | audio | audio p99 | latency p50 / p95 / p99 / max (ms) | smallest | late >200 / 300 / 500 / 1000 / 2000 ms | stalls (time) | decode errors | timestamps back | back at floor | goodput | start | pusher survived |"
        );
        let _ = writeln!(
            md,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in rows {
            let l = r.latency_ms;
            // A pusher the tap cannot read (SRT): above the run's smallest, which is marked.
            // With the clock's spread: what every latency would gain were no frame taken to
            // leave before it was due.
            let smallest = match (r.latency_from, r.source_spread_ms) {
                ("smallest", _) => format!("{} ms (subtracted)", fmt_ms(r.floor_ms)),
                (_, Some(spread)) => format!("{} ms (+{spread:.0})", fmt_ms(r.floor_ms)),
                _ => format!("{} ms", fmt_ms(r.floor_ms)),
            };
            let late: Vec<String> = r
                .late_ratio
                .iter()
                .map(|x| format!("{:.1} %", x * 100.0))
                .collect();
            let _ = writeln!(
                md,
                "| {} | {}/{} | {:.1} % | {} ms | {} / {} / {} / {} | {} | {} | {} ({:.1} s) | {} | {} | {} | {} | {} | {} |",
                r.transport,
                r.frames_received,
                r.frames_expected,
                r.audio_delivered * 100.0,
                fmt_ms(r.audio_p99_ms),
                fmt_ms(l[0]),
                fmt_ms(l[1]),
                fmt_ms(l[2]),
                fmt_ms(l[3]),
                smallest,
                late.join(" / "),
                r.stalls,
                r.stall_seconds,
                r.decode_errors.map_or("–".into(), |n| n.to_string()),
                r.timestamps_back,
                recovery_text(r),
                if r.goodput_bps.is_finite() {
                    format!("{:.2} Mbit/s", r.goodput_bps / 1e6)
                } else {
                    "–".into()
                },
                r.start_seconds.map_or("–".into(), |s| format!("{s:.2} s")),
                if r.pusher_survived { "yes" } else { "**no**" },
            );
        }
        md.push('\n');
        // Each direction's ceiling once, and its in-budget best once per budget.
        let (mut ceilings_told, mut bests_told) = (Vec::new(), Vec::new());
        for r in results.iter().filter(|r| r.profile == p.name) {
            if let Some(limits) = r.link_limits {
                if !ceilings_told.contains(&r.direction) {
                    ceilings_told.push(r.direction);
                    let ceiling = limits.frames_ceiling;
                    let floor = limits.floor_ms.map_or(String::new(), |f| {
                        format!("floor {f:.0} ms (one-way delay and the largest key frame at the link's rate; latencies above are arrival minus due time on the pusher's clock, nothing subtracted); ")
                    });
                    let _ = writeln!(
                        md,
                        "Link the stream's way ({}): {floor}at most {ceiling}/{} video frames fit once audio and packet headers pass (the link's shortfall forces {:.1} % lost or late; 90 % of the ceiling: {:.0}, 75 %: {:.0}).\n",
                        r.direction,
                        r.frames_expected,
                        (1.0 - ceiling as f64 / r.frames_expected.max(1) as f64) * 100.0,
                        ceiling as f64 * 0.9,
                        ceiling as f64 * 0.75,
                    );
                }
                if !p.link.blackouts.is_empty() {
                    // Where the blackout fell against the key frames differs run by run.
                    let lost = r.frames_expected.saturating_sub(limits.frames_in_budget);
                    let _ = writeln!(
                        md,
                        "Within {} ms ({}, {}): {} of the {} frames arrive in time and decode when a sender that knows the link ahead of time (its rate, and when this run's blackout fell against the clip's key frames) chooses them: the {lost} it cannot save are {:.1} % of the {} judged, the fewest lost or late beyond {} ms any sender gets in this run, by the bench's model of the link (good to a frame or two).\n",
                        limits.budget_ms,
                        r.transport,
                        r.direction,
                        limits.frames_in_budget,
                        r.frames_expected,
                        lost as f64 / limits.frames_judged.max(1) as f64 * 100.0,
                        limits.frames_judged,
                        limits.budget_ms,
                    );
                } else if !bests_told.contains(&(r.direction, limits.budget_ms)) {
                    bests_told.push((r.direction, limits.budget_ms));
                    let _ = writeln!(
                        md,
                        "Within {} ms ({}): {} of them arrive in time and decode when a sender that knows the link's rate ahead of time chooses them (frame by frame; a reference frame that misses costs the rest of its GOP, a disposable picture only itself).\n",
                        limits.budget_ms,
                        r.direction,
                        limits.frames_in_budget,
                    );
                }
            }
            if let Some(u) = &r.bulk {
                let _ = writeln!(
                    md,
                    "Bulk upload beside {} ({}): {:.2} Mbit/s over {:.1} s ({}).\n",
                    r.transport,
                    r.direction,
                    u.rate_bps / 1e6,
                    u.seconds,
                    u.congestion,
                );
            }
            if let Some(f) = &r.flood {
                let refusals: Vec<String> = r
                    .server_refusals
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.0}"))
                    .collect();
                let _ = writeln!(
                    md,
                    "Flood ({}, {:.1} s): wrong ALPN {} refused / {} accepted; wrong-token HELLOs {} closed / {} never connected; {} half-open Initials and {} garbage datagrams sent. The gateway counted: {}. Its peak resident memory: {}.\n",
                    r.transport,
                    f.seconds,
                    f.wrong_alpn_refused,
                    f.wrong_alpn_accepted,
                    f.bad_hellos_closed,
                    f.bad_hellos_not_connected,
                    f.half_open_sent,
                    f.garbage_sent,
                    refusals.join(", "),
                    r.server_rss_peak_bytes
                        .map_or("–".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
                );
            }
        }
    }
    md
}

/// Extra latency over time for each transport on one profile.
pub fn latency_chart(profile: &Profile, results: &[RunResult]) -> String {
    let rows: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.profile == profile.name)
        .collect();
    let (w, h, left, right, top, bottom) = (900.0, 420.0, 70.0, 150.0, 40.0, 50.0);
    let t_max = rows
        .iter()
        .flat_map(|r| r.timeline.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_max = rows
        .iter()
        .flat_map(|r| r.timeline.iter().map(|p| p.1))
        .fold(100.0f64, f64::max)
        .min(30_000.0);
    let x = |t: f64| left + (w - left - right) * t / t_max;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v.min(y_max) / y_max);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="22" font-size="15">{}: latency, arrival minus due time ({})</text>
"#,
        profile.name, profile.description
    );
    for i in 0..=5 {
        let v = y_max * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y0}" y2="{y0}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{} ms</text>"##,
            w - right,
            left - 6.0,
            y(v) + 4.0,
            fmt_ms(v),
            y0 = y(v)
        );
    }
    for i in 0..=5 {
        let t = t_max * f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{t:.0} s</text>"#,
            x(t),
            h - bottom + 18.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = r
            .timeline
            .iter()
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let ly = top + 18.0 * i as f64 + 10.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            w - right + 10.0,
            ly - 4.0,
            w - right + 30.0,
            ly + 2.0,
            r.transport
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Late ratio at a 1000 ms budget, grouped by profile, one bar per transport.
pub fn late_chart(profiles: &[Profile], results: &[RunResult], transports: &[&str]) -> String {
    let budget = 3; // index of 1000 ms in BUDGETS_MS
    let (w, h, left, top, bottom) = (1000.0, 420.0, 60.0, 40.0, 90.0);
    let groups: Vec<&Profile> = profiles
        .iter()
        .filter(|p| results.iter().any(|r| r.profile == p.name))
        .collect();
    let group_w = (w - left - 20.0) / groups.len().max(1) as f64;
    let bar_w = group_w * 0.8 / transports.len().max(1) as f64;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="22" font-size="15">Frames later than {} ms (missing frames count as late)</text>
"#,
        BUDGETS_MS[budget]
    );
    for i in 0..=4 {
        let v = f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y0}" y2="{y0}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{:.0} %</text>"##,
            w - 20.0,
            left - 6.0,
            y(v) + 4.0,
            v * 100.0,
            y0 = y(v)
        );
    }
    for (g, p) in groups.iter().enumerate() {
        let gx = left + group_w * g as f64 + group_w * 0.1;
        for (i, t) in transports.iter().enumerate() {
            let Some(r) = results
                .iter()
                .find(|r| r.profile == p.name && r.transport == *t)
            else {
                continue;
            };
            let v = r.late_ratio[budget];
            // A sliver stays visible for zero so every transport shows.
            let top_y = y(v).min(y(0.0) - 1.0);
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{top_y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {:.1} %</title></rect>"#,
                gx + bar_w * i as f64,
                bar_w * 0.9,
                y(0.0) - top_y,
                COLORS[i % COLORS.len()],
                p.name,
                t,
                v * 100.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text transform="translate({:.1},{:.1}) rotate(30)">{}</text>"#,
            gx,
            h - bottom + 16.0,
            p.name
        );
    }
    for (i, t) in transports.iter().enumerate() {
        let lx = left + 110.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{t}</text>"#,
            h - 22.0,
            COLORS[i % COLORS.len()],
            lx + 16.0,
            h - 12.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Writes `results.json`, `results.md` and the charts into `dir`.
pub fn write_all(
    dir: &Path,
    profiles: &[Profile],
    results: &[RunResult],
    transports: &[&str],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::json!({ "profiles": profiles, "runs": results });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json).expect("serializable"),
    )?;
    std::fs::write(dir.join("results.md"), markdown(profiles, results))?;
    for p in profiles {
        if results.iter().any(|r| r.profile == p.name) {
            std::fs::write(
                dir.join(format!("latency-{}.svg", p.name)),
                latency_chart(p, results),
            )?;
        }
    }
    std::fs::write(
        dir.join("late-ratio.svg"),
        late_chart(profiles, results, transports),
    )
}
