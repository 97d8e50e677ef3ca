//! Charts as inline SVG, made on the server: no script, no library, a few kilobytes
//! whatever the number of points (series are thinned to at most `MAX_POINTS`).

use maud::{html, Markup};

/// Most points drawn per series; more are thinned evenly (first and last kept).
pub const MAX_POINTS: usize = 240;

const W: f64 = 640.0;
const H: f64 = 200.0;
/// Left margin for the axis labels; top, right and bottom margins.
const ML: f64 = 64.0;
const MT: f64 = 10.0;
const MR: f64 = 10.0;
const MB: f64 = 24.0;

/// One line of a chart: (unix seconds, value) points, drawn with CSS class `class`.
pub struct Series<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub points: Vec<(i64, f64)>,
}

/// Every `n`-th point so that at most `MAX_POINTS` stay, the last one always.
fn thin(p: &[(i64, f64)]) -> Vec<(i64, f64)> {
    if p.len() <= MAX_POINTS {
        return p.to_vec();
    }
    let step = p.len().div_ceil(MAX_POINTS);
    let mut out: Vec<(i64, f64)> = p.iter().step_by(step).copied().collect();
    if out.last() != p.last() {
        out.push(*p.last().unwrap());
    }
    out
}

/// Time on x, `fmt(value)` on y (from 0 to the largest value). Lines for series of two
/// points or more, dots for each point of a series with fewer than 40.
pub fn time_chart(title: &str, series: &[Series], fmt: impl Fn(f64) -> String) -> Markup {
    let all: Vec<(i64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    if all.is_empty() {
        return html! { p.muted { "No data yet for " (title) "." } };
    }
    let t0 = all.iter().map(|p| p.0).min().unwrap();
    let t1 = all.iter().map(|p| p.0).max().unwrap().max(t0 + 1);
    let ymax = all.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let x = |t: i64| ML + (t - t0) as f64 / (t1 - t0) as f64 * (W - ML - MR);
    let y = |v: f64| MT + (1.0 - v / ymax) * (H - MT - MB);
    let day = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default()
    };
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) {
                title { (title) }
                (grid(ymax, &y, &fmt))
                text.axis x=(ML) y=(H - 6.0) { (day(t0)) }
                text.axis x=(W - MR) y=(H - 6.0) text-anchor="end" { (day(t1)) }
                @for s in series {
                    @let pts = thin(&s.points);
                    @if pts.len() >= 2 {
                        polyline class=(s.class) fill="none" points=(pts.iter().map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v))).collect::<Vec<_>>().join(" ")) {}
                    }
                    @if pts.len() < 40 {
                        @for &(t, v) in &pts {
                            circle class=(s.class) cx=(format!("{:.1}", x(t))) cy=(format!("{:.1}", y(v))) r="3" {}
                        }
                    }
                }
            }
            figcaption {
                (title) ": "
                @for (i, s) in series.iter().enumerate() {
                    @if i > 0 { ", " }
                    span class=(format!("key {}", s.class)) { (s.name) }
                    " (" (s.points.len()) ")"
                }
            }
        }
    }
}

/// One bar per point (thinned like the lines), time on x.
pub fn bar_chart(title: &str, points: &[(i64, f64)], fmt: impl Fn(f64) -> String) -> Markup {
    if points.is_empty() {
        return html! { p.muted { "No data yet for " (title) "." } };
    }
    let pts = thin(points);
    let ymax = pts.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let n = pts.len() as f64;
    let bw = ((W - ML - MR) / n).max(1.0);
    let y = |v: f64| MT + (1.0 - v / ymax) * (H - MT - MB);
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) {
                title { (title) }
                (grid(ymax, &y, &fmt))
                // All bars in one path: a few bytes each, not an element each.
                path.bar d=(bars(&pts, bw, &y)) {}
            }
            figcaption { (title) " (" (points.len()) ")" }
        }
    }
}

/// Three grid lines (0, half, the top) with their values.
fn grid(ymax: f64, y: &impl Fn(f64) -> f64, fmt: &impl Fn(f64) -> String) -> Markup {
    html! {
        @for f in [0.0, 0.5, 1.0] {
            line.grid x1=(ML) x2=(W - MR) y1=(y(ymax * f)) y2=(y(ymax * f)) {}
            text.axis x=(ML - 4.0) y=(y(ymax * f) + 4.0) text-anchor="end" { (fmt(ymax * f)) }
        }
    }
}

/// The outline of one bar per point, as path data.
fn bars(pts: &[(i64, f64)], bw: f64, y: &impl Fn(f64) -> f64) -> String {
    let base = H - MB;
    let mut d = String::with_capacity(pts.len() * 28);
    for (i, &(_, v)) in pts.iter().enumerate() {
        d.push_str(&format!(
            "M{:.1} {base}V{:.1}h{:.1}V{base}z",
            ML + i as f64 * bw,
            y(v),
            (bw - 1.0).max(0.5)
        ));
    }
    d
}

/// A horizontal bar: `used` of `total`, for capacity.
pub fn meter(label: &str, used: u64, total: u64) -> Markup {
    let frac = if total == 0 {
        0.0
    } else {
        (used as f64 / total as f64).clamp(0.0, 1.0)
    };
    let class = if frac > 0.9 {
        "bad"
    } else if frac > 0.75 {
        "warn"
    } else {
        "ok"
    };
    html! {
        svg.meter viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label=(format!("{label}: {:.0}%", frac * 100.0)) {
            rect.track x="0" y="0" width="100" height="6" {}
            rect class=(class) x="0" y="0" width=(format!("{:.2}", frac * 100.0)) height="6" {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_the_ends_and_bounds_the_points() {
        let p: Vec<(i64, f64)> = (0..1000).map(|i| (i, i as f64)).collect();
        let t = thin(&p);
        assert!(t.len() <= MAX_POINTS + 1, "{}", t.len());
        assert_eq!(t.first(), p.first());
        assert_eq!(t.last(), p.last());
        assert_eq!(thin(&p[..10]).len(), 10);
    }

    #[test]
    fn charts_are_svg_of_bounded_size() {
        let p: Vec<(i64, f64)> = (0..1000).map(|i| (i * 3600, (i * 1000) as f64)).collect();
        let s = time_chart(
            "size",
            &[Series {
                name: "logical",
                class: "s1",
                points: p.clone(),
            }],
            |v| format!("{v:.0}"),
        )
        .into_string();
        assert!(s.contains("<svg") && s.contains("<polyline"), "{s}");
        assert!(s.len() < 12_000, "{} bytes", s.len());
        let b = bar_chart("changed", &p, |v| format!("{v:.0}")).into_string();
        assert_eq!(b.matches('z').count(), thin(&p).len(), "one bar per point");
        assert!(b.len() < 12_000, "{} bytes", b.len());
        assert!(time_chart("x", &[], |v| v.to_string())
            .into_string()
            .contains("No data"));
        // A title with markup in it is escaped.
        assert!(time_chart(
            "<b>",
            &[Series {
                name: "a",
                class: "s1",
                points: vec![(0, 1.0)]
            }],
            |v| v.to_string()
        )
        .into_string()
        .contains("&lt;b&gt;"));
    }

    #[test]
    fn meter_is_clamped() {
        assert!(meter("disk", 5, 0).into_string().contains("width=\"0.00\""));
        assert!(meter("disk", 50, 10)
            .into_string()
            .contains("width=\"100.00\""));
    }
}
