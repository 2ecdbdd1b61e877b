//! Figures, their distributions, and the ratio of each to its baseline.

use std::time::Duration;

use serde::Serialize;

/// Latency samples of one run.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// p50, p90, p99 and max in milliseconds (nearest rank); zeros when empty.
    pub fn summary(&mut self) -> LatencySummary {
        self.0.sort_unstable();
        let pick = |q: f64| -> f64 {
            if self.0.is_empty() {
                return 0.0;
            }
            let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
            ms(self.0[rank - 1])
        };
        LatencySummary {
            samples: self.0.len(),
            p50_ms: pick(0.50),
            p90_ms: pick(0.90),
            p99_ms: pick(0.99),
            max_ms: pick(1.0),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A latency distribution.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What the process under test used during a run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcessUsage {
    /// CPU time (user + system) spent during the measured part, seconds.
    pub cpu_secs: f64,
    /// Resident memory at the end, KiB.
    pub rss_kib: u64,
}

/// One measured figure and, when the scenario has one, its baseline and the ratio.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// `value / baseline`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

impl Figure {
    pub fn new(name: impl Into<String>, unit: &'static str, value: f64) -> Self {
        Self { name: name.into(), unit, value, baseline: None, ratio: None }
    }

    pub fn against(mut self, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self.ratio = (baseline > 0.0).then(|| self.value / baseline);
        self
    }
}

/// The outcome of one scenario.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub clients: usize,
    pub duration_secs: f64,
    pub payload_bytes: usize,
    pub in_flight: usize,
    pub figures: Vec<Figure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ProcessUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_server: Option<ProcessUsage>,
    /// Anything the reader must know to interpret the figures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Report {
    /// A report of `scenario` run at `load`, with no figures, usage or notes yet.
    pub fn of(scenario: &'static str, load: crate::baseline::Load) -> Self {
        Self {
            scenario,
            clients: load.clients,
            duration_secs: load.duration.as_secs_f64(),
            payload_bytes: load.payload,
            in_flight: load.in_flight,
            figures: Vec::new(),
            server: None,
            baseline_server: None,
            notes: Vec::new(),
        }
    }
}

/// How reports are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// An aligned table per scenario.
    Text,
    /// One JSON object per scenario, one per line.
    Json,
    /// A Markdown section per scenario (what scripts/bench.sh puts in docs/benchmarks.md).
    Markdown,
}

impl Report {
    pub fn print(&self, output: Output) -> anyhow::Result<()> {
        match output {
            Output::Json => {
                println!("{}", serde_json::to_string(self)?);
                return Ok(());
            }
            Output::Markdown => {
                self.print_markdown();
                return Ok(());
            }
            Output::Text => {}
        }
        println!(
            "{} — clients {}, duration {:.1} s, payload {} B, in flight {}",
            self.scenario, self.clients, self.duration_secs, self.payload_bytes, self.in_flight
        );
        println!("  {:<34} {:>12} {:>12} {:>8}", "figure", "ours", "baseline", "ratio");
        for f in &self.figures {
            let baseline = f.baseline.map_or_else(|| "—".to_owned(), |b| format!("{b:.2}"));
            let ratio = f.ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"));
            println!("  {:<34} {:>12.2} {:>12} {:>8}", format!("{} ({})", f.name, f.unit), f.value, baseline, ratio);
        }
        if let Some(s) = self.server {
            println!("  server: cpu {:.2} s, rss {} KiB", s.cpu_secs, s.rss_kib);
        }
        if let Some(s) = self.baseline_server {
            println!("  baseline server: cpu {:.2} s, rss {} KiB", s.cpu_secs, s.rss_kib);
        }
        for note in &self.notes {
            println!("  note: {note}");
        }
        Ok(())
    }
}

impl Report {
    fn print_markdown(&self) {
        println!("### `{}`\n", self.scenario);
        println!(
            "clients {}, duration {:.1} s, payload {} B, in flight {}\n",
            self.clients, self.duration_secs, self.payload_bytes, self.in_flight
        );
        println!("| figure | unit | ours | baseline | ratio |");
        println!("|---|---|---:|---:|---:|");
        for f in &self.figures {
            let baseline = f.baseline.map_or_else(|| "—".to_owned(), |b| format!("{b:.2}"));
            let ratio = f.ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"));
            println!("| {} | {} | {:.2} | {baseline} | {ratio} |", f.name, f.unit, f.value);
        }
        println!();
        if let Some(s) = self.server {
            println!(
                "- server under test: CPU {:.2} s during the measurement, RSS {} KiB at the end",
                s.cpu_secs, s.rss_kib
            );
        }
        if let Some(s) = self.baseline_server {
            println!("- baseline server: CPU {:.2} s, RSS {} KiB", s.cpu_secs, s.rss_kib);
        }
        for note in &self.notes {
            println!("- {note}");
        }
        println!();
    }
}

/// Adds p50/p90/p99/max latency figures, each against the baseline's.
pub fn latency_figures(prefix: &str, ours: LatencySummary, baseline: Option<LatencySummary>) -> Vec<Figure> {
    let pairs = [
        ("p50", ours.p50_ms, baseline.map(|b| b.p50_ms)),
        ("p90", ours.p90_ms, baseline.map(|b| b.p90_ms)),
        ("p99", ours.p99_ms, baseline.map(|b| b.p99_ms)),
        ("max", ours.max_ms, baseline.map(|b| b.max_ms)),
    ];
    pairs
        .into_iter()
        .map(|(name, value, base)| {
            let figure = Figure::new(format!("{prefix} latency {name}"), "ms", value);
            match base {
                Some(b) => figure.against(b),
                None => figure,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut l = Latencies::default();
        for i in 1..=100 {
            l.record(Duration::from_millis(i));
        }
        let s = l.summary();
        assert_eq!((s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Latencies::default().summary().samples, 0);
        assert_eq!(Figure::new("x", "ms", 3.0).against(2.0).ratio, Some(1.5));
    }
}
