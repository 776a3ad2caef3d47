//! What every benchmark reports: a row per measure (weir's figure, the baseline
//! measured in the same run, their ratio and the target), scaling curves, and
//! how big a run is (`Size`). The tables are printed once, after every suite ran.

use std::fmt;
use std::time::Duration;

/// How much work a run does: `Full` measures, `Quick` only checks that every
/// benchmark still runs end to end (its figures mean nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Full,
    Quick,
}

impl Size {
    /// `full` in a full run, `quick` in a quick one.
    pub fn pick<T>(self, full: T, quick: T) -> T {
        match self {
            Size::Full => full,
            Size::Quick => quick,
        }
    }
}

/// A figure with its unit.
#[derive(Clone, Copy, Debug)]
pub enum Figure {
    PerSecond(f64, &'static str),
    Time(Duration),
    Megabytes(f64),
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Figure::PerSecond(rate, what) => write!(f, "{} {what}/s", thousands(*rate)),
            Figure::Time(d) if *d >= Duration::from_millis(10) => write!(f, "{:.0} ms", d.as_secs_f64() * 1e3),
            Figure::Time(d) if *d >= Duration::from_millis(1) => write!(f, "{:.2} ms", d.as_secs_f64() * 1e3),
            Figure::Time(d) if *d >= Duration::from_micros(1) => write!(f, "{:.0} µs", d.as_secs_f64() * 1e6),
            Figure::Time(d) => write!(f, "{} ns", d.as_nanos()),
            Figure::Megabytes(mb) => write!(f, "{mb:.0} MB"),
        }
    }
}

/// 1234567.8 → "1,234,568".
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What a row should reach.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// weir ÷ baseline at least this.
    RatioAtLeast(f64),
    /// weir's figure at most this time.
    TimeAtMost(Duration),
    /// weir's figure at most this many megabytes.
    MegabytesAtMost(f64),
    /// No target: the figure informs.
    Report,
}

/// One measure: weir's figure, the baseline's from the same run, and the target.
#[derive(Debug)]
pub struct Row {
    pub measure: String,
    pub weir: Figure,
    pub baseline: Option<(Figure, &'static str)>,
    pub ratio: Option<f64>,
    pub target: Target,
}

impl Row {
    /// weir against a baseline, as the ratio of two rates.
    pub fn rates(measure: impl Into<String>, weir: Figure, baseline: Figure, of: &'static str, target: Target) -> Row {
        let ratio = match (weir, baseline) {
            (Figure::PerSecond(a, _), Figure::PerSecond(b, _)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        Row { measure: measure.into(), weir, baseline: Some((baseline, of)), ratio, target }
    }

    /// weir's figure beside a baseline's of another kind than a rate (e.g. a
    /// latency beside the machine's floor): no ratio, the target is on weir's.
    pub fn beside(measure: impl Into<String>, weir: Figure, baseline: Figure, of: &'static str, target: Target) -> Row {
        Row { measure: measure.into(), weir, baseline: Some((baseline, of)), ratio: None, target }
    }

    /// A figure of weir's alone.
    pub fn figure(measure: impl Into<String>, weir: Figure, target: Target) -> Row {
        Row { measure: measure.into(), weir, baseline: None, ratio: None, target }
    }

    /// Whether the target is met; `None` when there is none.
    pub fn met(&self) -> Option<bool> {
        match (self.target, self.weir) {
            (Target::RatioAtLeast(at_least), _) => self.ratio.map(|r| r >= at_least),
            (Target::TimeAtMost(at_most), Figure::Time(d)) => Some(d <= at_most),
            (Target::MegabytesAtMost(at_most), Figure::Megabytes(mb)) => Some(mb <= at_most),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::RatioAtLeast(r) => write!(f, "≥ {r:.2}"),
            Target::TimeAtMost(d) => write!(f, "≤ {}", Figure::Time(*d)),
            Target::MegabytesAtMost(mb) => write!(f, "≤ {mb:.0} MB"),
            Target::Report => write!(f, "report"),
        }
    }
}

/// One point of a scaling curve: the amount of work and what it cost.
#[derive(Debug)]
pub struct Point {
    pub work: u64,
    pub rate: Figure,
    pub memory: Figure,
}

/// Throughput and memory at 1×, 10× and 100× the work.
#[derive(Debug)]
pub struct Curve {
    pub measure: String,
    /// What the work counts, e.g. "records" or "keys".
    pub unit: &'static str,
    pub points: Vec<Point>,
}

/// Prints the rows as a Markdown table (the README carries it as printed).
pub fn print_rows(rows: &[Row]) {
    println!("| measure | weir | baseline | ratio | target | |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let baseline = row.baseline.map(|(figure, of)| format!("{figure} ({of})")).unwrap_or_else(|| "—".to_owned());
        let ratio = row.ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "—".to_owned());
        let met = match row.met() {
            Some(true) => "met",
            Some(false) => "**gap**",
            None => "",
        };
        println!("| {} | {} | {baseline} | {ratio} | {} | {met} |", row.measure, row.weir, row.target);
    }
}

/// Prints the curves: each point's rate and memory, and how the rate held up from 1× to 100×.
pub fn print_curves(curves: &[Curve]) {
    println!("| scaling | 1× | 10× | 100× | rate at 100× ÷ at 1× |");
    println!("|---|---|---|---|---|");
    for curve in curves {
        let cells: Vec<String> = curve
            .points
            .iter()
            .map(|p| format!("{} {}: {}, {}", thousands(p.work as f64), curve.unit, p.rate, p.memory))
            .collect();
        let held = match (curve.points.first().map(|p| p.rate), curve.points.last().map(|p| p.rate)) {
            (Some(Figure::PerSecond(first, _)), Some(Figure::PerSecond(last, _))) if first > 0.0 => {
                format!("{:.2}", last / first)
            }
            _ => "—".to_owned(),
        };
        println!("| {} | {} | {held} |", curve.measure, cells.join(" | "));
    }
}

/// The median of some samples.
pub fn median<T: Copy + PartialOrd>(samples: &[T]) -> T {
    quantile(samples, 0.5)
}

/// The value at quantile `q` (0..=1) of some samples.
pub fn quantile<T: Copy + PartialOrd>(samples: &[T], q: f64) -> T {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
