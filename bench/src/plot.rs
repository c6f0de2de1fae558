//! PNG plots (plotters, bitmap backend, encoded with `png`): throughput and TTFT p50/p99
//! against concurrency, and prefill TTFT against prompt length, every server on the same
//! axes. Text needs a TrueType font, loaded at run time from `FONT_PATH`; without it the
//! plots are drawn with no text at all rather than not at all.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::compare::Runs;
use crate::error::BenchError;
use crate::scenario::sweep::SweepResult;
use crate::stats::Summary;

pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (900, 560);
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Registers the font once; true when text can be drawn.
fn fonts_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let Ok(bytes) = std::fs::read(FONT_PATH) else {
            return false;
        };
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    })
}

/// One line on a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: usize,
    pub dashed: bool,
}

/// Axis labels and scales of a chart.
pub struct Axes<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    pub log_y: bool,
}

fn plot_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Plot(e.to_string())
}

/// Draws `series` to a PNG at `path`, with text when the font is there. Only positive,
/// finite points are drawn (the x axis is logarithmic).
pub fn line_chart(path: &Path, axes: &Axes, series: &[Series]) -> Result<(), BenchError> {
    line_chart_with(path, axes, series, fonts_ready())
}

fn line_chart_with(
    path: &Path,
    axes: &Axes,
    series: &[Series],
    text: bool,
) -> Result<(), BenchError> {
    let pts = series.iter().flat_map(|s| s.points.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, 0.0f64);
    for (x, y) in pts.filter(|(x, y)| *x > 0.0 && *y > 0.0 && y.is_finite()) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(BenchError::Plot(format!(
            "no positive points to plot in {}",
            path.display()
        )));
    }
    let (x0, x1) = (x0 / 1.2, x1 * 1.2);
    let mut buf = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    // A log axis over less than a 20× range shows almost no tick labels: go linear.
    if axes.log_y && y1 / y0 > 20.0 {
        draw(
            &mut buf,
            axes,
            series,
            text,
            (x0..x1).log_scale(),
            (y0 / 1.5..y1 * 1.5).log_scale(),
        )?;
    } else {
        draw(
            &mut buf,
            axes,
            series,
            text,
            (x0..x1).log_scale(),
            0.0..y1 * 1.15,
        )?;
    }
    write_png(path, &buf)
}

fn draw<Y>(
    buf: &mut [u8],
    axes: &Axes,
    series: &[Series],
    text: bool,
    x: impl AsRangedCoord<Value = f64, CoordDescType: ValueFormatter<f64>>,
    y: Y,
) -> Result<(), BenchError>
where
    Y: AsRangedCoord<Value = f64, CoordDescType: ValueFormatter<f64>>,
{
    let root = BitMapBackend::with_buffer(buf, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if text {
        builder
            .caption(axes.title, ("sans-serif", 22))
            .x_label_area_size(48)
            .y_label_area_size(72);
    }
    let mut chart = builder.build_cartesian_2d(x, y).map_err(plot_err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .label_style(("sans-serif", 14))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(plot_err)?;
    for s in series {
        let color = PALETTE[s.color % PALETTE.len()];
        let style = color.stroke_width(2);
        let drawn = if s.dashed {
            chart
                .draw_series(DashedLineSeries::new(s.points.clone(), 8, 5, style))
                .map_err(plot_err)?
        } else {
            chart
                .draw_series(LineSeries::new(s.points.clone(), style))
                .map_err(plot_err)?
        };
        if text {
            // Two segments: touching for a solid line, apart for a dashed one.
            let gap = if s.dashed { 6 } else { 0 };
            drawn.label(s.name.clone()).legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (9, 0)], color.stroke_width(2))
                    + PathElement::new(vec![(9 + gap, 0), (24, 0)], color.stroke_width(2))
            });
        }
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(plot_err)?;
    }
    if text {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}

fn write_png(path: &Path, rgb: &[u8]) -> Result<(), BenchError> {
    let file =
        File::create(path).map_err(BenchError::io(format!("creating {}", path.display())))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), SIZE.0, SIZE.1);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Best);
    let mut writer = enc.write_header().map_err(plot_err)?;
    writer.write_image_data(rgb).map_err(plot_err)
}

/// Writes throughput.png, ttft.png and (when there are prefill runs) prefill.png into
/// `dir`; returns the file names written. A label keeps its color across charts.
pub fn plot_runs(runs: &Runs, dir: &Path) -> Result<Vec<String>, BenchError> {
    let labels = runs.labels();
    let sweeps: Vec<(usize, &String, &SweepResult)> = labels
        .iter()
        .enumerate()
        .filter_map(|(i, l)| runs.sweep(l).map(|s| (i, l, s)))
        .collect();
    let mut written = Vec::new();
    if !sweeps.is_empty() {
        written.extend(sweep_charts(&sweeps, dir)?);
    }
    let prefill: Vec<Series> = labels
        .iter()
        .enumerate()
        .filter_map(|(i, l)| runs.prefill(l).map(|p| (i, l, p)))
        .map(|(i, l, p)| Series {
            name: l.clone(),
            points: p
                .points
                .iter()
                .filter_map(|q| q.summary.ttft_ms.map(|d| (q.prompt_len as f64, d.p50)))
                .collect(),
            color: i,
            dashed: false,
        })
        .collect();
    if !prefill.is_empty() {
        let axes = Axes {
            title: "Prefill: TTFT p50 vs prompt length (c=1)",
            x_desc: "prompt tokens",
            y_desc: "TTFT ms",
            log_y: true,
        };
        line_chart(&dir.join("prefill.png"), &axes, &prefill)?;
        written.push("prefill.png".to_string());
    }
    Ok(written)
}

/// (concurrency, figure) for every level where `f` has a value.
fn level_points(s: &SweepResult, f: impl Fn(&Summary) -> Option<f64>) -> Vec<(f64, f64)> {
    s.levels
        .iter()
        .filter_map(|l| f(&l.summary).map(|y| (l.concurrency as f64, y)))
        .collect()
}

/// throughput.png and ttft.png from (color, label, sweep) triples.
fn sweep_charts(
    sweeps: &[(usize, &String, &SweepResult)],
    dir: &Path,
) -> Result<Vec<String>, BenchError> {
    let throughput: Vec<Series> = sweeps
        .iter()
        .map(|&(i, l, s)| Series {
            name: l.clone(),
            points: level_points(s, |m| Some(m.output_tok_per_s)),
            color: i,
            dashed: false,
        })
        .collect();
    let axes = Axes {
        title: "Output throughput vs concurrency",
        x_desc: "concurrent streams",
        y_desc: "output tokens/s",
        log_y: false,
    };
    line_chart(&dir.join("throughput.png"), &axes, &throughput)?;
    let ttft: Vec<Series> = sweeps
        .iter()
        .flat_map(|&(i, l, s)| {
            [(false, "p50"), (true, "p99")].map(|(dashed, q)| Series {
                name: format!("{l} TTFT {q}"),
                points: level_points(s, |m| m.ttft_ms.map(|d| if dashed { d.p99 } else { d.p50 })),
                color: i,
                dashed,
            })
        })
        .collect();
    let axes = Axes {
        title: "Time to first token vs concurrency (p50 solid, p99 dashed)",
        x_desc: "concurrent streams",
        y_desc: "TTFT ms",
        log_y: true,
    };
    line_chart(&dir.join("ttft.png"), &axes, &ttft)?;
    Ok(vec!["throughput.png".to_string(), "ttft.png".to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Vec<Series> {
        vec![
            Series {
                name: "a".into(),
                points: vec![(1.0, 10.0), (4.0, 30.0), (64.0, 90.0)],
                color: 0,
                dashed: false,
            },
            Series {
                name: "b".into(),
                points: vec![(1.0, 12.0), (4.0, 0.0), (64.0, 50.0)],
                color: 1,
                dashed: true,
            },
        ]
    }

    fn is_png(path: &Path) -> bool {
        std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() > 1000)
    }

    #[test]
    fn draws_with_and_without_text() {
        let dir = std::env::temp_dir();
        let axes = Axes {
            title: "t",
            x_desc: "x",
            y_desc: "y",
            log_y: true,
        };
        let plain = dir.join(format!("tessera-bench-{}-plain.png", std::process::id()));
        line_chart_with(&plain, &axes, &series(), false).unwrap();
        assert!(is_png(&plain));
        std::fs::remove_file(&plain).unwrap();
        if fonts_ready() {
            let labelled = dir.join(format!("tessera-bench-{}-text.png", std::process::id()));
            let axes = Axes {
                log_y: false,
                ..axes
            };
            line_chart_with(&labelled, &axes, &series(), true).unwrap();
            assert!(is_png(&labelled));
            std::fs::remove_file(&labelled).unwrap();
        }
    }

    #[test]
    fn refuses_empty_charts() {
        let empty = vec![Series {
            name: "e".into(),
            points: vec![(0.0, 1.0)],
            color: 0,
            dashed: false,
        }];
        let axes = Axes {
            title: "t",
            x_desc: "x",
            y_desc: "y",
            log_y: false,
        };
        let err =
            line_chart_with(Path::new("/nonexistent/x.png"), &axes, &empty, false).unwrap_err();
        assert!(err.to_string().contains("no positive points"));
    }
}
