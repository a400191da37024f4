//! Small pieces the pages share: error notes, formatting, and the SVG charts.

use leptos::prelude::*;

use crate::api::ApiError;

/// An API error shown in place of what could not be loaded or done.
#[component]
pub fn ErrorNote(error: ApiError) -> impl IntoView {
    let text = match error.status {
        404 => format!("Not found: {}", error.message),
        403 => format!("Not allowed: {}", error.message),
        401 => "Your session has ended. Sign in again.".to_string(),
        _ => error.message,
    };
    view! { <p class="error" role="alert">{text}</p> }
}

/// `2026-11-22 04:13:52` (UTC) from Unix milliseconds. Computed from the value alone, so the
/// server and the browser render the same text.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60)
}

pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// One line of a chart.
#[derive(Clone)]
pub struct Series {
    pub label: &'static str,
    pub class: &'static str,
    pub points: Vec<Option<f64>>,
}

/// A line chart drawn as SVG: equally spaced points, gaps where a point is missing, the y axis from
/// zero to the largest value (rounded up), with its top value and a legend.
#[component]
pub fn LineChart(title: &'static str, unit: &'static str, series: Vec<Series>) -> impl IntoView {
    const W: f64 = 300.0;
    const H: f64 = 100.0;
    let max = series.iter().flat_map(|s| s.points.iter().flatten()).fold(0.0f64, |a, &b| a.max(b));
    let top = nice_ceiling(max);
    let n = series.iter().map(|s| s.points.len()).max().unwrap_or(0).max(2);
    let x = move |i: usize| i as f64 * W / (n - 1) as f64;
    let y = move |v: f64| H - (v / top * H);
    let paths = series
        .iter()
        .map(|s| {
            let mut d = String::new();
            let mut pen_down = false;
            for (i, point) in s.points.iter().enumerate() {
                match point {
                    Some(v) => {
                        d.push_str(&format!("{}{:.1},{:.1} ", if pen_down { "L" } else { "M" }, x(i), y(*v)));
                        // A point without a neighbour is drawn as a dot (a round cap on a tiny stroke).
                        let alone = !pen_down && s.points.get(i + 1).is_none_or(Option::is_none);
                        if alone {
                            d.push_str("l0.01,0 ");
                        }
                        pen_down = true;
                    }
                    None => pen_down = false,
                }
            }
            view! { <path d=d class=format!("line {}", s.class)/> }
        })
        .collect_view();
    let latest = series
        .iter()
        .map(|s| {
            let value = s.points.iter().rev().flatten().next().map_or("–".to_string(), |v| format_number(*v));
            view! { <li><span class=format!("swatch {}", s.class)></span>{s.label}": "{value}" "{unit}</li> }
        })
        .collect_view();
    view! {
        <figure class="chart">
            <figcaption>{title}</figcaption>
            <svg viewBox=format!("0 0 {W} {H}") preserveAspectRatio="none" role="img" aria-label=title>
                <line x1="0" y1="0" x2=W y2="0" class="grid"/>
                <line x1="0" y1=H / 2.0 x2=W y2=H / 2.0 class="grid"/>
                {paths}
            </svg>
            <div class="axis">{format!("scale 0 – {} {unit}", format_number(top))}</div>
            <ul class="legend">{latest}</ul>
        </figure>
    }
}

fn format_number(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// 1, 2 or 5 times a power of ten, at least `v` (and at least 1).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|c| *c >= v).unwrap_or(10.0 * power)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_in_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_795_320_832_000), "2026-11-22 04:13:52");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
    }

    #[test]
    fn chart_tops_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
    }
}
