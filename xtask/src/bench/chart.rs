//! Owns the comparison benchmark's chart: an SVG written by hand (no plotting dependency) of
//! grouped bars, one group per metric, one bar per ratio (netpath over another path), with the
//! 1.0x line and the issue's target marked on each group that has one.
use std::fmt::Write as _;

/// One bar series: a ratio such as "netpath / routed", and its colour.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub colour: &'static str,
}

/// One metric's bars, in the order of the series (`None`: not measured, shown as "n/a"; a
/// group may have fewer values than there are series). A label may hold several lines.
#[derive(Debug, Clone)]
pub struct Group {
    pub label: String,
    pub values: Vec<Option<f64>>,
    /// The issue's target ratio, drawn as a red mark across the group.
    pub target: Option<f64>,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 75.0;

/// The chart as an SVG document.
pub fn ratio_chart(title: &str, series: &[Series], groups: &[Group]) -> String {
    let top_value = groups
        .iter()
        .flat_map(|g| g.values.iter().flatten().copied().chain(g.target))
        .fold(1.2_f64, f64::max);
    let step = if top_value > 4.0 { 1.0 } else { 0.25 };
    let y_max = (top_value * 1.08 / step).ceil() * step;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let plot_w = WIDTH - LEFT - RIGHT;
    let y = |v: f64| TOP + plot_h * (1.0 - v / y_max);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Legend.
    let mut x = LEFT;
    for s in series {
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="36" width="12" height="12" fill="{}"/><text x="{}" y="46">{}</text>"#,
            s.colour,
            x + 16.0,
            escape(&s.name)
        );
        x += 28.0 + 7.0 * s.name.len() as f64;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{x}" y1="42" x2="{}" y2="42" stroke="#d62728" stroke-width="3"/><text x="{}" y="46">target</text>"##,
        x + 18.0,
        x + 22.0
    );
    // Grid and axis.
    let mut v = 0.0;
    while v <= y_max + 1e-9 {
        let yy = y(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" text-anchor="end">{v:.2}x</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        );
        v += step;
    }
    let one = y(1.0);
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{one:.1}" x2="{}" y2="{one:.1}" stroke="#333" stroke-dasharray="5,4"/>"##,
        WIDTH - RIGHT
    );
    // Bars.
    let group_w = plot_w / groups.len().max(1) as f64;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    for (gi, group) in groups.iter().enumerate() {
        let gx = LEFT + group_w * gi as f64 + group_w * 0.1;
        for (si, value) in group.values.iter().enumerate() {
            let bx = gx + bar_w * si as f64;
            let colour = series.get(si).map_or("#999", |s| s.colour);
            match value {
                Some(value) => {
                    let top = y(value.min(y_max));
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{bx:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{}: {value:.2}x</title></rect>"#,
                        bar_w - 2.0,
                        y(0.0) - top,
                        escape(series.get(si).map_or("", |s| s.name.as_str()))
                    );
                    let _ = writeln!(
                        svg,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{value:.2}</text>"#,
                        bx + (bar_w - 2.0) / 2.0,
                        top - 3.0
                    );
                }
                None => {
                    let _ = writeln!(
                        svg,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">n/a</text>"#,
                        bx + (bar_w - 2.0) / 2.0,
                        y(0.0) - 3.0
                    );
                }
            }
        }
        if let Some(target) = group.target {
            let ty = y(target);
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#d62728" stroke-width="3"><title>target {target:.2}x</title></line>"##,
                gx - 4.0,
                gx + group_w * 0.8 + 2.0
            );
        }
        // One line of text per line of the label.
        let lx = gx + group_w * 0.4;
        let _ = write!(
            svg,
            r#"<text x="{lx:.1}" y="{:.1}" text-anchor="middle">"#,
            HEIGHT - BOTTOM + 18.0
        );
        for (i, part) in group.label.lines().enumerate() {
            let dy = if i == 0 { 0.0 } else { 14.0 };
            let _ = write!(
                svg,
                r#"<tspan x="{lx:.1}" dy="{dy}">{}</tspan>"#,
                escape(part)
            );
        }
        svg.push_str("</text>\n");
    }
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="black"/>"#,
        y(0.0),
        WIDTH - RIGHT,
        y(0.0)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="11">ratio of medians; above 1.0x netpath is faster (higher rate)</text>"#,
        WIDTH / 2.0,
        HEIGHT - 10.0
    );
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_bar_per_value_and_a_target_per_group() {
        let series = vec![
            Series {
                name: "netpath / routed".into(),
                colour: "#1f77b4",
            },
            Series {
                name: "netpath / iptables".into(),
                colour: "#ff7f0e",
            },
        ];
        let groups = vec![
            Group {
                label: "TCP stream".into(),
                values: vec![Some(0.9), Some(1.4)],
                target: Some(1.0),
            },
            Group {
                label: "UDP <64 B>\nsecond line".into(),
                values: vec![Some(1.2), None],
                target: None,
            },
        ];
        let svg = ratio_chart("netpath & others", &series, &groups);
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<rect x=").count(),
            2 + 3,
            "legend 2 + bars 3:\n{svg}"
        );
        assert_eq!(svg.matches("<title>target").count(), 1);
        assert!(svg.contains("n/a"));
        assert!(svg.contains(">UDP &lt;64 B&gt;</tspan>") && svg.contains("netpath &amp; others"));
        assert!(svg.contains(">second line</tspan>"), "{svg}");
        assert!(svg.contains(">1.40<"), "{svg}");
    }
}
