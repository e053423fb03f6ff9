//! A drill report as one self-contained HTML page (no script, no outside resource): the
//! verdict first, objectives against measurements, a chart of the workload around the
//! fault drawn in SVG, the invariants, what could not be measured, the timeline.

use std::fmt::Write;

use super::{DrillReport, Verdict};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|x| format!("{x:.2} {unit}"))
        .unwrap_or_else(|| "not measured".into())
}

/// The chart: acknowledged transfers per second (bars, coloured by the region that
/// answered) and the drill's steps as vertical lines.
fn chart(r: &DrillReport) -> String {
    let (w, h, pad) = (900.0, 220.0, 30.0);
    let Some(first) = r.seconds.first().map(|s| s.at_ms) else {
        return "<p>No per-second figures were recorded.</p>".into();
    };
    let last = r
        .seconds
        .last()
        .map(|s| s.at_ms)
        .unwrap_or(first)
        .max(first + 1000);
    let span = (last - first) as f64;
    let max = r
        .seconds
        .iter()
        .map(|s| s.acknowledged)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |t: i64| pad + (t - first) as f64 / span * (w - 2.0 * pad);
    let bar = ((w - 2.0 * pad) / r.seconds.len().max(1) as f64 - 1.0).max(1.0);
    let mut s = format!(
        "<svg role=\"img\" aria-label=\"transfers acknowledged per second\" viewBox=\"0 0 {w} {h}\" width=\"100%\">"
    );
    for sec in &r.seconds {
        let bh = sec.acknowledged as f64 / max * (h - 2.0 * pad);
        let colour = match sec.region.as_str() {
            "us" => "#3b6ea5",
            "eu" => "#d08a1f",
            _ => "#888",
        };
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" fill=\"{colour}\"><title>{} acknowledged, p99 {:.1} ms, {} errors, via {}</title></rect>",
            x(sec.at_ms) - bar,
            h - pad - bh,
            sec.acknowledged,
            sec.p99_ms,
            sec.errors,
            esc(&sec.region)
        );
    }
    for (i, step) in r.timeline.iter().enumerate() {
        if step.at_ms < first || step.at_ms > last {
            continue;
        }
        let xs = x(step.at_ms);
        let _ = write!(
            s,
            "<line x1=\"{xs:.1}\" x2=\"{xs:.1}\" y1=\"{pad}\" y2=\"{:.1}\" stroke=\"#b00\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#b00\">{}</text>",
            h - pad,
            xs + 3.0,
            pad + 12.0 + 12.0 * (i % 4) as f64,
            i + 1
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{pad}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#444\"/><text x=\"{pad}\" y=\"{:.1}\" font-size=\"11\">0 s</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{:.0} s</text><text x=\"2\" y=\"{:.1}\" font-size=\"11\">{max:.0}/s</text></svg>",
        w - pad,
        h - pad,
        h - pad,
        h - 8.0,
        w - pad,
        h - 8.0,
        span / 1000.0,
        pad - 4.0
    );
    s
}

/// The page.
pub fn render(r: &DrillReport) -> String {
    let (verdict, colour) = match r.verdict {
        Verdict::Pass => ("PASS", "#1d7a35"),
        Verdict::Fail => ("FAIL", "#b00020"),
    };
    let o = &r.objectives;
    let m = &r.measured;
    let mut rows = String::new();
    let mut row = |what: &str, objective: String, measured: String, ok: Option<bool>| {
        let mark = match ok {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "NOT MEASURED",
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{mark}</td></tr>",
            esc(what),
            esc(&objective),
            esc(&measured),
            if ok == Some(true) { "ok" } else { "bad" }
        );
    };
    row(
        "RTO (fault to the first transfer acknowledged by the new region)",
        format!("<= {:.0} s", o.rto_s),
        opt(m.rto_s, "s"),
        m.rto_s.map(|v| v <= o.rto_s),
    );
    row(
        "RPO (acknowledged transfers lost, in seconds of writes)",
        format!("<= {:.1} s", o.rpo_s),
        match (m.lost_seconds, m.lost) {
            (Some(s), Some(n)) => format!("{s:.2} s ({n} transfers)"),
            _ => "not measured".into(),
        },
        m.lost_seconds.map(|v| v <= o.rpo_s),
    );
    if let Some(max) = o.max_lost {
        row(
            "Acknowledged transfers lost",
            format!("<= {max}"),
            m.lost
                .map(|n| n.to_string())
                .unwrap_or("not measured".into()),
            m.lost.map(|n| n <= max),
        );
    }
    row(
        "Samples with two writable regions (every 100 ms)",
        format!("<= {}", o.max_two_writable),
        m.two_writable
            .map(|n| format!("{n} of {}", m.samples))
            .unwrap_or("not measured".into()),
        m.two_writable.map(|n| n <= o.max_two_writable),
    );
    let mut inv = String::new();
    for i in &r.invariants {
        let (mark, class) = match i.ok {
            Some(true) => ("ok", "ok"),
            Some(false) => ("FAIL", "bad"),
            None => ("NOT CHECKED", "bad"),
        };
        let _ = write!(
            inv,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{mark}</td><td>{}{}</td></tr>",
            esc(&i.id),
            esc(&i.name),
            esc(&i.detail),
            i.first_example
                .as_deref()
                .map(|x| format!("<br>first example: <code>{}</code>", esc(x)))
                .unwrap_or_default()
        );
    }
    let list = |items: &[String]| -> String {
        if items.is_empty() {
            "<p>None.</p>".into()
        } else {
            format!(
                "<ul>{}</ul>",
                items
                    .iter()
                    .map(|i| format!("<li>{}</li>", esc(i)))
                    .collect::<String>()
            )
        }
    };
    let mut steps = String::new();
    let t0 = r.timeline.first().map(|s| s.at_ms).unwrap_or(0);
    for (i, s) in r.timeline.iter().enumerate() {
        let _ = write!(
            steps,
            "<tr><td>{}</td><td>+{:.2} s</td><td>{}</td></tr>",
            i + 1,
            (s.at_ms - t0) as f64 / 1000.0,
            esc(&s.what)
        );
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Haven drill {id}: {verdict}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }}
h1 {{ margin-bottom: 0.2em; }}
.verdict {{ display: inline-block; padding: 0.2em 0.8em; color: #fff; background: {colour}; border-radius: 4px; font-weight: bold; }}
table {{ border-collapse: collapse; width: 100%; margin: 0.5em 0 1.5em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.35em 0.5em; text-align: left; vertical-align: top; }}
.ok {{ color: #1d7a35; font-weight: bold; }} .bad {{ color: #b00020; font-weight: bold; }}
.meta {{ color: #555; font-size: 13px; }} code {{ font-size: 13px; }}
</style></head><body>
<h1>Drill: {scenario} <span class="verdict" id="verdict">{verdict}</span></h1>
<p>{description}</p>
<p class="meta">{id} &middot; started {started} &middot; finished {finished} &middot; operator {operator} &middot; haven {version} &middot; config sha256 <code>{hash}</code></p>
<h2>Objectives (fixed before the start) and measurements</h2>
<table><tr><th>objective</th><th>target</th><th>measured</th><th></th></tr>{rows}</table>
<h2>Objectives missed</h2>{failures}
<h2>Not measured (each fails the drill)</h2>{missing}
<h2>The workload around the fault</h2>
<p>Transfers acknowledged per second (blue: US answered, orange: EU); red lines: the steps below. {acked} acknowledged in all, p99 latency {p99:.1} ms. Active region before: {before}, after: {after}.</p>
{chart}
<h3>Transaction latency (target: under 100 ms)</h3>
{latency}
<h2>Invariants</h2>
<table><tr><th></th><th>invariant</th><th></th><th>detail</th></tr>{inv}</table>
<h2>Stop conditions</h2>{stops}
<h2>Timeline</h2>
<table><tr><th></th><th>time</th><th>step</th></tr>{steps}</table>
</body></html>
"#,
        id = esc(&r.id),
        scenario = esc(&r.scenario),
        description = esc(&r.description),
        started = esc(&r.started_at),
        finished = esc(&r.finished_at),
        operator = esc(&r.operator),
        version = esc(&r.haven_version),
        hash = esc(&r.config_sha256),
        failures = list(&r.failures),
        missing = list(&r.not_measured),
        acked = m.acknowledged,
        p99 = m.latency_p99_ms,
        before = esc(m.active_before.as_deref().unwrap_or("unknown")),
        after = esc(m.active_after.as_deref().unwrap_or("unknown")),
        chart = chart(r),
        latency = latency_table(m),
        stops = list(&r.stop_conditions),
    )
}

/// Latency per phase of the drill, as a table (a note for reports without it).
fn latency_table(m: &super::Measured) -> String {
    if m.latency.is_empty() {
        return "<p>Not measured per phase in this report.</p>".into();
    }
    let mut rows = String::new();
    for p in &m.latency {
        let class = if p.transfers > 0 && p.p99_ms > super::latency::TARGET_MS {
            " class=\"bad\""
        } else {
            ""
        };
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{:.1} ms</td><td{class}>{:.1} ms</td><td>{:.1} ms</td><td>{:.1}%</td></tr>",
            esc(&p.phase),
            p.transfers,
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            p.under_100ms_pct
        );
    }
    format!(
        "<table id=\"latency\"><tr><th>phase</th><th>transfers</th><th>p50</th><th>p99</th><th>max</th><th>under 100 ms</th></tr>{rows}</table>"
    )
}
