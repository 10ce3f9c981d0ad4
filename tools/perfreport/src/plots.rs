//! SVG plots for RESULTS.md. Text is emitted as SVG `<text>`, so no font files are
//! needed to render; the viewer picks a sans-serif font.

use std::fs;
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use serde_json::Value;

use crate::{f, results_for};

const SIZE: (u32, u32) = (900, 540);

fn color(engine: &str) -> RGBColor {
    match engine {
        "tickwire" => RGBColor(214, 39, 40),
        "tickwire-1w" => RGBColor(255, 127, 14),
        "baseline" => RGBColor(60, 60, 60),
        "ws" => RGBColor(31, 119, 180),
        "nats" => RGBColor(44, 160, 44),
        _ => RGBColor(148, 103, 189),
    }
}

/// Renders every plot the run has data for; returns the file names written.
pub fn render_all(run: &Value, dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for s in run["scenarios"].as_array().into_iter().flatten() {
        let Some(s) = s.as_str() else { continue };
        let name = format!("latency_{s}.svg");
        if latency(run, s, &dir.join(&name))? {
            out.push(name);
        }
    }
    for scen in ["S2", "S2-lg1", "S7"] {
        for cpu in [false, true] {
            if let Some(name) = steps_plot(run, dir, scen, cpu)? {
                out.push(name);
            }
        }
    }
    if s5(run, &dir.join("s5_rss.svg"))? {
        out.push("s5_rss.svg".into());
    }
    Ok(out)
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// (1/(1-percentile), latency µs) points of an HdrHistogram `.hgrm` file.
fn read_hgrm(path: &Path) -> Option<Vec<(f64, f64)>> {
    let text = fs::read_to_string(path).ok()?;
    let pts: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let c: Vec<f64> = l.split_whitespace().map_while(|w| w.parse().ok()).collect();
            // Rows with all four columns; the final p=1.0 row has no inverse column.
            (c.len() == 4 && c[1] < 1.0).then(|| (c[3].max(1.0), c[0].max(1.0)))
        })
        .collect();
    (!pts.is_empty()).then_some(pts)
}

fn latency(run: &Value, scen: &str, path: &Path) -> Result<bool> {
    let mut series = Vec::new();
    for r in results_for(run, scen) {
        if let Some(h) = r["hgrm_file"].as_str()
            && let Some(pts) = read_hgrm(Path::new(h))
        {
            series.push((r["engine"].as_str().unwrap_or("?").to_string(), pts));
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let xmax = all.clone().map(|p| p.0).fold(10.0, f64::max) * 1.5;
    let ymin = all.clone().map(|p| p.1).fold(f64::MAX, f64::min) / 1.5;
    let ymax = all.map(|p| p.1).fold(1.0, f64::max) * 1.5;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{scen}: latency by percentile (feed send → client receipt)"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((1.0..xmax).log_scale(), (ymin.max(1.0)..ymax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .y_labels(12)
        .x_desc("percentile")
        .y_desc("latency")
        .x_label_formatter(&|v| pct_label(*v))
        .y_label_formatter(&|v| us_label(*v))
        .draw()
        .map_err(err)?;
    for (engine, pts) in series {
        let c = color(&engine);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(engine)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    // Curves rise to the right, so the lower right corner is free.
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)?;
    Ok(true)
}

fn us_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{} s", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{} ms", trim(v / 1e3))
    } else {
        format!("{} µs", trim(v))
    }
}

fn pct_label(v: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / v);
    let s = format!("{p:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)
}

/// Deliveries/s (or CPU µs per delivery) against offered deliveries/s over the S2 steps.
/// Delivered/s or CPU per delivery over a stepped scenario's steps: against
/// offered load for S2 (tick rate steps), against connections for S7
/// (connection steps at constant offered load). Returns the file written.
fn steps_plot(run: &Value, dir: &Path, scen: &str, cpu: bool) -> Result<Option<String>> {
    let by_connections = scen == "S7";
    let mut series = Vec::new();
    for r in results_for(run, scen) {
        let pts: Vec<(f64, f64)> = r["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let x = if by_connections {
                    f(&s["connections"])?
                } else {
                    f(&s["offered_deliveries_per_sec"])?
                };
                let y = if cpu {
                    f(&s["server"]["cpu_us_per_delivery"])?
                } else {
                    f(&s["delivered_per_sec"])?
                };
                (x > 0.0 && y > 0.0).then_some((x, y))
            })
            .collect();
        if !pts.is_empty() {
            series.push((r["engine"].as_str().unwrap_or("?").to_string(), pts));
        }
    }
    if series.is_empty() {
        return Ok(None);
    }
    let name = format!(
        "{}_{}.svg",
        scen.to_lowercase(),
        if cpu { "cpu" } else { "deliveries" }
    );
    let path = dir.join(&name);
    let offered = f(&run["params"][scen]["offered"]);
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let xmin = all.clone().map(|p| p.0).fold(f64::MAX, f64::min) / 1.3;
    let xmax = all.clone().map(|p| p.0).fold(0.0, f64::max) * 1.3;
    let mut ylo = all.clone().map(|p| p.1).fold(f64::MAX, f64::min) / 1.5;
    let mut yhi = all.map(|p| p.1).fold(0.0, f64::max) * 1.5;
    if let (Some(o), false) = (offered, cpu) {
        ylo = ylo.min(o / 1.5);
        yhi = yhi.max(o * 1.5);
    }
    // Delivered vs offered shares one scale on both axes so the diagonal means 100%.
    let (xmin, xmax, ymin, ymax) = if cpu || by_connections {
        (xmin, xmax, ylo, yhi)
    } else {
        let (lo, hi) = (xmin.min(ylo), xmax.max(yhi));
        (lo, hi, lo, hi)
    };
    let root = SVGBackend::new(&path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let caption = match (by_connections, cpu) {
        (false, true) => format!("{scen}: server CPU per delivery vs offered load"),
        (false, false) => format!("{scen}: delivered vs offered deliveries per second"),
        (true, true) => "S7: server CPU per delivery vs connections (constant offered load)".into(),
        (true, false) => "S7: delivered per second vs connections (constant offered load)".into(),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        // Log axes over less than a decade get crowded: few labels, no minor lines.
        .x_labels(6)
        .y_labels(8)
        .light_line_style(TRANSPARENT)
        .x_desc(if by_connections {
            "connections (ticks/s = offered / connections)"
        } else {
            "offered deliveries/s (ticks/s × connections)"
        })
        .y_desc(if cpu {
            "server CPU µs per delivery"
        } else {
            "delivered/s"
        })
        .x_label_formatter(&|v| si(*v))
        .y_label_formatter(&|v| if cpu { format!("{v}") } else { si(*v) })
        .draw()
        .map_err(err)?;
    if !cpu {
        // The ideal: everything offered is delivered.
        let ideal = match (by_connections, offered) {
            (true, Some(o)) => vec![(xmin, o), (xmax, o)],
            _ => vec![(xmin, xmin), (xmax, xmax)],
        };
        chart
            .draw_series(DashedLineSeries::new(
                ideal,
                6,
                4,
                RGBColor(170, 170, 170).stroke_width(1),
            ))
            .map_err(err)?
            .label("offered")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(170, 170, 170)));
    }
    for (engine, pts) in series {
        let c = color(&engine);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(engine)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(err)?;
    }
    let pos = if cpu || by_connections {
        SeriesLabelPosition::UpperRight
    } else {
        SeriesLabelPosition::UpperLeft
    };
    legend(&mut chart, pos)?;
    root.present().map_err(err)?;
    Ok(Some(name))
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// RSS per idle connection, one bar per engine.
fn s5(run: &Value, path: &Path) -> Result<bool> {
    let bars: Vec<(String, f64)> = results_for(run, "S5")
        .into_iter()
        .filter_map(|r| {
            Some((
                r["engine"].as_str()?.to_string(),
                f(&r["rss_kib_per_connection"])?,
            ))
        })
        .collect();
    if bars.is_empty() {
        return Ok(false);
    }
    let ymax = bars.iter().map(|b| b.1).fold(1.0, f64::max) * 1.2;
    let n = bars.len();
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("S5: server RSS per idle connection", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n as f64, 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|v| {
            // Labels only at bar centres.
            let i = v.floor() as usize;
            if (v - v.floor() - 0.5).abs() < 1e-6 && i < names.len() {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc("KiB per connection")
        .draw()
        .map_err(err)?;
    for (i, (engine, v)) in bars.iter().enumerate() {
        let c = color(engine);
        let x = i as f64;
        chart
            .draw_series([Rectangle::new([(x + 0.2, 0.0), (x + 0.8, *v)], c.filled())])
            .map_err(err)?;
        chart
            .draw_series([Text::new(
                format!("{v:.2}"),
                (x + 0.42, *v + ymax * 0.02),
                ("sans-serif", 15),
            )])
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(true)
}
