//! B11's SVG: the cost growth against the store size, drawn by hand.

use std::fmt::Write as _;

use super::Figures;
use super::stores::size_label;

/// Four panels (start, idle RSS, status latency, eviction) against the store size, log-x,
/// as a self-contained SVG.
pub(super) fn plot(sizes: &[u64], all: &[Figures], smoke: bool) -> String {
    /// A line: name, colour, one value per size.
    type Series<'a> = (&'a str, &'a str, Vec<f64>);
    /// A panel: title, target line, lines.
    type Panel<'a> = (&'a str, Option<(f64, &'a str)>, Vec<Series<'a>>);
    let panels: Vec<Panel<'_>> = vec![
        (
            "start: spawn → gateway answers (ms)",
            Some((2000.0, "target 2 s")),
            vec![("start", "#1f77b4", all.iter().map(|f| f.start_ms).collect())],
        ),
        (
            "RSS idle (MB)",
            Some((64.0, "target 64 MB")),
            vec![("RSS", "#2ca02c", all.iter().map(Figures::rss_mb).collect())],
        ),
        (
            "status latency (ms)",
            None,
            vec![
                (
                    "p50",
                    "#ff7f0e",
                    all.iter().map(|f| f.status_p50_ms).collect(),
                ),
                (
                    "p99",
                    "#d62728",
                    all.iter().map(|f| f.status_p99_ms).collect(),
                ),
            ],
        ),
        (
            "eviction of 10 % of the budget (ms)",
            None,
            vec![
                (
                    "spawn → done",
                    "#9467bd",
                    all.iter().map(|f| f.evict_ms).collect(),
                ),
                (
                    "after ready",
                    "#8c564b",
                    all.iter().map(|f| f.evict_ready_ms).collect(),
                ),
            ],
        ),
    ];
    let (pw, ph) = (420.0, 260.0);
    let (ml, mr, mt, mb) = (64.0, 16.0, 34.0, 40.0);
    let (w, h) = (pw * 2.0, ph * 2.0 + 40.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">B11: a node's costs against the blobs it stores{}</text>"#,
        w / 2.0,
        if smoke { " (smoke)" } else { "" }
    );
    let xs: Vec<f64> = sizes.iter().map(|n| (*n as f64).log10()).collect();
    // A quarter of a decade of room on either side of the sizes measured.
    let (mut x0, mut x1) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min) - 0.25,
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max) + 0.25,
    );
    if !x0.is_finite() || !x1.is_finite() {
        (x0, x1) = (3.0, 6.0);
    }
    for (pi, (title, target, series)) in panels.iter().enumerate() {
        let ox = (pi % 2) as f64 * pw;
        let oy = 40.0 + (pi / 2) as f64 * ph;
        let (left, right, top, bottom) = (ox + ml, ox + pw - mr, oy + mt, oy + ph - mb);
        let mut ymax = series
            .iter()
            .flat_map(|(_, _, v)| v.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        if let Some((t, _)) = target
            && *t < ymax * 3.0
        {
            ymax = ymax.max(*t);
        }
        let ymax = nice(ymax * 1.1);
        let px = |x: f64| left + (x - x0) / (x1 - x0) * (right - left);
        let py = |y: f64| bottom - y / ymax * (bottom - top);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
            (left + right) / 2.0,
            oy + 20.0,
            esc(title)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            right - left,
            bottom - top
        );
        // y grid: 4 steps.
        for k in 0..=4 {
            let y = ymax * f64::from(k) / 4.0;
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{0}" x2="{right}" y2="{0}" stroke="#eee"/><text x="{1}" y="{2}" text-anchor="end">{3}</text>"##,
                py(y),
                left - 4.0,
                py(y) + 4.0,
                fmt_axis(y)
            );
        }
        // x: the sizes measured (log scale).
        for (x, n) in xs.iter().zip(sizes) {
            let _ = writeln!(
                s,
                r##"<line x1="{0}" y1="{top}" x2="{0}" y2="{bottom}" stroke="#eee"/><text x="{0}" y="{1}" text-anchor="middle">{2}</text>"##,
                px(*x),
                bottom + 14.0,
                size_label(*n)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">blobs stored (log scale)</text>"##,
            (left + right) / 2.0,
            bottom + 30.0
        );
        if let Some((t, what)) = target
            && *t <= ymax
        {
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{0}" x2="{right}" y2="{0}" stroke="#d62728" stroke-dasharray="5,4"/><text x="{1}" y="{2}" text-anchor="end" fill="#d62728">{3}</text>"##,
                py(*t),
                right - 4.0,
                py(*t) - 4.0,
                esc(what)
            );
        }
        for (si, (name, color, v)) in series.iter().enumerate() {
            let pts: Vec<(f64, f64)> = xs
                .iter()
                .zip(v)
                .filter(|(_, y)| y.is_finite())
                .map(|(x, y)| (px(*x), py(*y)))
                .collect();
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (x, y) in &pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#
                );
            }
            let ly = top + 14.0 + si as f64 * 14.0;
            let _ = writeln!(
                s,
                r#"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="{color}" stroke-width="2"/><text x="{3}" y="{4}">{5}</text>"#,
                left + 8.0,
                ly - 4.0,
                left + 24.0,
                left + 28.0,
                ly,
                esc(name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A round axis maximum at or above `x`: 1, 2 or 5 × a power of ten.
pub(super) fn nice(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|v| *v >= x)
        .unwrap_or(10.0 * p)
}

pub(super) fn fmt_axis(y: f64) -> String {
    if y >= 100.0 || y == 0.0 {
        format!("{y:.0}")
    } else if y >= 1.0 {
        format!("{y:.1}")
    } else {
        format!("{y:.2}")
    }
}

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_round_up() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(73.0), 100.0);
        assert_eq!(nice(1.2), 2.0);
    }

    #[test]
    fn the_plot_is_an_svg() {
        let f = Figures {
            start_ms: 120.0,
            rss_kib: Some(30_000),
            status_p50_ms: 0.4,
            status_p99_ms: 1.2,
            evict_ms: 300.0,
            evict_ready_ms: 200.0,
            ..Figures::default()
        };
        let svg = plot(&[1000, 5000], &[f.clone(), f], true);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 6);
    }
}
