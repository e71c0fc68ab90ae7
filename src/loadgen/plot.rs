//! The latency–throughput plot (SVG, plotters): one p99 line and one dashed p50 line per curve,
//! x = inferences/s, y = latency in ms, optionally a horizontal SLO line. SVG only, to keep the
//! build lean (no font or bitmap dependencies).

use std::path::Path;

use plotters::prelude::*;

use super::runner::StepResult;
use super::LoadgenError;

/// One sweep as plotted: (inferences/s, p50 ms, p99 ms) per step.
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64, f64)>,
}

impl Curve {
    pub fn of(label: &str, steps: &[StepResult], batch: usize) -> Curve {
        Curve {
            label: label.to_string(),
            points: steps
                .iter()
                .map(|s| {
                    (
                        s.throughput * batch as f64,
                        s.latency.p50_us / 1000.0,
                        s.latency.p99_us / 1000.0,
                    )
                })
                .collect(),
        }
    }
}

fn err(e: impl std::fmt::Display) -> LoadgenError {
    LoadgenError::Plot(e.to_string())
}

/// Draws `curves` into `path` (must end in `.svg`), with an optional SLO line at `slo_ms`.
pub fn latency_throughput(path: &Path, title: &str, curves: &[Curve]) -> Result<(), LoadgenError> {
    latency_throughput_slo(path, title, curves, None)
}

pub fn latency_throughput_slo(
    path: &Path,
    title: &str,
    curves: &[Curve],
    slo_ms: Option<f64>,
) -> Result<(), LoadgenError> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(LoadgenError::Plot(format!(
            "'{}': only SVG output is built in (name the file *.svg)",
            path.display()
        )));
    }
    let pts = || curves.iter().flat_map(|c| c.points.iter());
    let xmax = pts().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let ymax = pts().map(|p| p.2).fold(slo_ms.unwrap_or(1.0), f64::max) * 1.15;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("throughput (inferences/s)")
        .y_desc("latency (ms)")
        .draw()
        .map_err(err)?;
    for (i, c) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let p99: Vec<(f64, f64)> = c.points.iter().map(|p| (p.0, p.2)).collect();
        let p50: Vec<(f64, f64)> = c.points.iter().map(|p| (p.0, p.1)).collect();
        chart
            .draw_series(LineSeries::new(p99.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("{} p99", c.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(p99.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
        chart
            .draw_series(DashedLineSeries::new(p50, 6, 4, color.stroke_width(1)))
            .map_err(err)?
            .label(format!("{} p50", c.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1))
            });
    }
    if let Some(slo) = slo_ms {
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, slo), (xmax, slo)],
                RED.stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("SLO p99 {slo} ms"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_throughput_writes_svg_with_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.svg");
        let c = Curve {
            label: "digits".into(),
            points: vec![(100.0, 1.0, 2.0), (400.0, 2.0, 5.0)],
        };
        latency_throughput_slo(&p, "t", std::slice::from_ref(&c), Some(4.0)).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("digits p99") && svg.contains("SLO"));
        assert!(latency_throughput(&dir.path().join("c.png"), "t", &[c]).is_err());
    }
}
