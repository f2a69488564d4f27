//! Statistics of benchmark samples: medians and spread over repeats, latency percentiles
//! from an HDR histogram, ratios, and the rules for when a figure rests on too few samples
//! (or clock ticks) to mean anything. Pure.

use hdrhistogram::Histogram;

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// Spread as a fraction of the median ((max - min) / median).
    pub fn spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.median
        }
    }

    /// The farthest any repeat lay from the median, as a fraction of it: every repeat was
    /// within median × (1 ± this). What the tables print as `±`.
    pub fn deviation(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.median).max(self.median - self.min) / self.median.abs()
        }
    }

    /// `value` (the figure as reported, e.g. a percentile of the pooled rounds) with how far
    /// the repeats lay from it: `7.36 ±34 %`, or `7.36 (n=1)` when measured once. `value` is
    /// the median unless the caller reports something else computed from the same rounds.
    pub fn show(&self, value: f64, digits: usize) -> String {
        if self.n < 2 {
            return format!("{value:.digits$} (n=1)");
        }
        let around = Summary {
            median: value,
            ..*self
        };
        format!("{value:.digits$} ±{:.0} %", around.deviation() * 100.0)
    }
}

/// Fewer samples than this beyond a percentile and it is the value of a handful of
/// outliers, not a tail: the next run's p99.9 of 1000 samples is whatever its slowest
/// sample happens to be.
pub const MIN_SAMPLES_BEYOND: f64 = 10.0;

/// Whether `count` samples put at least [`MIN_SAMPLES_BEYOND`] of them beyond quantile `q`
/// (0–1): p99 needs 1000 samples, p99.9 10 000.
pub fn percentile_meaningful(count: u64, q: f64) -> bool {
    // 1000 × (1 − 0.99) is 10.000000000000009 or 9.99…; a millionth settles it.
    count as f64 * (1.0 - q) + 1e-6 >= MIN_SAMPLES_BEYOND
}

/// The unit of every CPU time in /proc (`USER_HZ`, 100 on every Linux ABI): 10 ms.
pub const CPU_TICK_S: f64 = 0.01;

/// Fewer CPU ticks than this in what a figure divides and one tick more or less per process
/// (two node proxies, or three relays) moves it by more than 10 %.
pub const MIN_CPU_TICKS: f64 = 20.0;

/// Whether `cpu_s` CPU seconds, read as differences of /proc tick counters, are enough
/// ticks for a figure computed from them to mean something.
pub fn cpu_meaningful(cpu_s: f64) -> bool {
    cpu_s / CPU_TICK_S + 1e-6 >= MIN_CPU_TICKS
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub count: u64,
}

/// A latency recorder (microsecond resolution, 1 µs to 60 s, 3 significant digits).
pub struct Latency {
    h: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            h: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid"),
        }
    }
}

impl Latency {
    pub fn record_us(&mut self, us: u64) {
        let _ = self.h.record(us.clamp(1, 60_000_000));
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.h.add(&other.h);
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.h.value_at_quantile(0.5) as f64,
            p90: self.h.value_at_quantile(0.9) as f64,
            p99: self.h.value_at_quantile(0.99) as f64,
            p999: self.h.value_at_quantile(0.999) as f64,
            count: self.h.len(),
        }
    }
}

/// `a / b`, or `None` when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spread() {
        assert_eq!(Summary::of(&[]), None);
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert!((s.spread() - 1.0).abs() < 1e-9);
        assert_eq!(Summary::of(&[1.0, 2.0, 3.0, 10.0]).unwrap().median, 2.5);
        assert_eq!(Summary::of(&[f64::NAN, 4.0]).unwrap().median, 4.0);
    }

    #[test]
    fn percentiles_from_histogram() {
        let mut l = Latency::default();
        for us in 1..=1000 {
            l.record_us(us);
        }
        let p = l.percentiles();
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() <= 1.0, "{p:?}");
        let mut m = Latency::default();
        m.record_us(5000);
        m.merge(&l);
        assert_eq!(m.percentiles().count, 1001);
    }

    #[test]
    fn deviation_is_the_farthest_repeat_from_the_figure() {
        let s = Summary::of(&[7.19, 7.36, 9.87]).unwrap();
        // 9.87 is 34 % above the median; 7.19 only 2 % below.
        assert!((s.deviation() - (9.87 - 7.36) / 7.36).abs() < 1e-9);
        assert_eq!(s.show(s.median, 2), "7.36 ±34 %");
        // Two repeats: half the range either way.
        assert_eq!(
            Summary::of(&[90.0, 110.0]).unwrap().show(100.0, 0),
            "100 ±10 %"
        );
        // Around another figure from the same rounds (a pooled percentile).
        assert_eq!(s.show(9.0, 1), "9.0 ±20 %");
        assert_eq!(Summary::of(&[4.55]).unwrap().show(4.55, 2), "4.55 (n=1)");
        assert_eq!(Summary::of(&[0.0, 0.0]).unwrap().deviation(), 0.0);
    }

    #[test]
    fn tails_need_ten_samples_beyond_them() {
        assert!(percentile_meaningful(1000, 0.99));
        assert!(!percentile_meaningful(999, 0.99));
        assert!(!percentile_meaningful(1000, 0.999));
        assert!(percentile_meaningful(10_000, 0.999));
        assert!(percentile_meaningful(20, 0.5));
        assert!(!percentile_meaningful(300, 0.99));
    }

    #[test]
    fn cpu_figures_need_twenty_ticks() {
        assert!(cpu_meaningful(0.2));
        assert!(!cpu_meaningful(0.19));
        // A quick run's 500 requests at 0.08 CPU s per 1000: 4 ticks.
        assert!(!cpu_meaningful(0.08 * 0.5));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(4.0), Some(2.0)), Some(2.0));
        assert_eq!(ratio(Some(4.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }
}
