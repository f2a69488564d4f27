//! Statistics of benchmark samples: medians and spread over repeats, latency percentiles
//! from an HDR histogram, ratios. Pure.

use hdrhistogram::Histogram;

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
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
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
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
    fn ratios() {
        assert_eq!(ratio(Some(4.0), Some(2.0)), Some(2.0));
        assert_eq!(ratio(Some(4.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }
}
