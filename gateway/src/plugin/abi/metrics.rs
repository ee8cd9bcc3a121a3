//! Plugin-defined metrics (proxy_define_metric and friends), process-wide:
//! defining the same name and kind again (another instance of the plugin)
//! returns the same id, so all instances add to one series. As in Envoy:
//! counters only grow (increment by a positive offset, or record adds);
//! gauges are set by record and moved by increments; histograms count
//! recorded values into Envoy's default buckets. [`plugin_metric_values`] is what /metrics shows.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use super::{HostResult, Status};
use crate::plugin::vm::Caller;

/// Upper bounds of the histogram buckets (Envoy's defaults).
pub const HISTOGRAM_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// Bound on distinct metrics, so a plugin cannot define names without limit.
const MAX_METRICS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    Counter(u64),
    Gauge(i64),
    /// Cumulative count per bucket of [`HISTOGRAM_BUCKETS`] (same order), then
    /// total count and sum.
    Histogram {
        buckets: Vec<u64>,
        count: u64,
        sum: u64,
    },
}

struct Metric {
    name: String,
    value: MetricValue,
}

#[derive(Default)]
struct Registry {
    by_name: HashMap<(String, MetricKind), u32>,
    metrics: Vec<Metric>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Every plugin-defined metric: (name as the plugin gave it, kind, value).
pub fn plugin_metric_values() -> Vec<(String, MetricKind, MetricValue)> {
    registry()
        .metrics
        .iter()
        .map(|m| {
            let kind = match m.value {
                MetricValue::Counter(_) => MetricKind::Counter,
                MetricValue::Gauge(_) => MetricKind::Gauge,
                MetricValue::Histogram { .. } => MetricKind::Histogram,
            };
            (m.name.clone(), kind, m.value.clone())
        })
        .collect()
}

pub(crate) fn define_metric(kind: MetricKind, name: &str) -> Result<u32, Status> {
    let mut r = registry();
    if let Some(&id) = r.by_name.get(&(name.to_string(), kind)) {
        return Ok(id);
    }
    if r.metrics.len() >= MAX_METRICS {
        return Err(Status::InternalFailure);
    }
    let value = match kind {
        MetricKind::Counter => MetricValue::Counter(0),
        MetricKind::Gauge => MetricValue::Gauge(0),
        MetricKind::Histogram => MetricValue::Histogram {
            buckets: vec![0; HISTOGRAM_BUCKETS.len()],
            count: 0,
            sum: 0,
        },
    };
    let id = r.metrics.len() as u32;
    r.metrics.push(Metric {
        name: name.to_string(),
        value,
    });
    r.by_name.insert((name.to_string(), kind), id);
    Ok(id)
}

fn with_metric<T>(id: u32, f: impl FnOnce(&mut MetricValue) -> Result<T, Status>) -> Result<T, Status> {
    let mut r = registry();
    let metric = r.metrics.get_mut(id as usize).ok_or(Status::NotFound)?;
    f(&mut metric.value)
}

pub(crate) fn increment_metric(id: u32, offset: i64) -> Result<(), Status> {
    with_metric(id, |v| match v {
        MetricValue::Counter(c) if offset > 0 => {
            *c = c.saturating_add(offset as u64);
            Ok(())
        }
        MetricValue::Gauge(g) => {
            *g = g.saturating_add(offset);
            Ok(())
        }
        _ => Err(Status::BadArgument),
    })
}

pub(crate) fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    with_metric(id, |v| match v {
        // Envoy adds a recorded value to a counter.
        MetricValue::Counter(c) => {
            *c = c.saturating_add(value);
            Ok(())
        }
        MetricValue::Gauge(g) => {
            *g = i64::try_from(value).unwrap_or(i64::MAX);
            Ok(())
        }
        MetricValue::Histogram { buckets, count, sum } => {
            for (bucket, bound) in buckets.iter_mut().zip(HISTOGRAM_BUCKETS) {
                if value as f64 <= *bound {
                    *bucket += 1;
                }
            }
            *count += 1;
            *sum = sum.saturating_add(value);
            Ok(())
        }
    })
}

pub(crate) fn get_metric(id: u32) -> Result<u64, Status> {
    with_metric(id, |v| match v {
        MetricValue::Counter(c) => Ok(*c),
        MetricValue::Gauge(g) => Ok(*g as u64),
        MetricValue::Histogram { .. } => Err(Status::BadArgument),
    })
}

/// proxy_define_metric(type, name) → id.
pub(super) fn define(c: &Caller, kind: u32, np: u32, nl: u32, idp: u32) -> HostResult {
    let kind = match kind {
        0 => MetricKind::Counter,
        1 => MetricKind::Gauge,
        2 => MetricKind::Histogram,
        _ => return Err(Status::BadArgument),
    };
    let name = c.read_string(np, nl)?;
    let id = define_metric(kind, &name)?;
    c.write_u32(idp, id)
}

pub(super) fn increment(_c: &Caller, id: u32, offset: i64) -> HostResult {
    increment_metric(id, offset)
}

pub(super) fn record(_c: &Caller, id: u32, value: u64) -> HostResult {
    record_metric(id, value)
}

pub(super) fn get(c: &Caller, id: u32, rp: u32) -> HostResult {
    let value = get_metric(id)?;
    c.write_u64(rp, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_keep_their_kind_semantics() {
        let counter = define_metric(MetricKind::Counter, "test_metrics_counter").unwrap();
        assert_eq!(define_metric(MetricKind::Counter, "test_metrics_counter"), Ok(counter));
        increment_metric(counter, 3).unwrap();
        assert_eq!(increment_metric(counter, -1), Err(Status::BadArgument));
        assert_eq!(increment_metric(counter, 0), Err(Status::BadArgument));
        assert_eq!(get_metric(counter), Ok(3));
        record_metric(counter, 2).unwrap();
        assert_eq!(get_metric(counter), Ok(5));

        let gauge = define_metric(MetricKind::Gauge, "test_metrics_gauge").unwrap();
        record_metric(gauge, 10).unwrap();
        increment_metric(gauge, -4).unwrap();
        assert_eq!(get_metric(gauge), Ok(6));

        let histogram = define_metric(MetricKind::Histogram, "test_metrics_histogram").unwrap();
        record_metric(histogram, 7).unwrap();
        record_metric(histogram, 700).unwrap();
        assert_eq!(get_metric(histogram), Err(Status::BadArgument));
        let values = plugin_metric_values();
        let (_, kind, value) = values.iter().find(|(n, _, _)| n == "test_metrics_histogram").unwrap();
        assert_eq!(*kind, MetricKind::Histogram);
        let MetricValue::Histogram { buckets, count, sum } = value else {
            panic!("not a histogram")
        };
        assert_eq!((*count, *sum), (2, 707));
        assert_eq!(buckets[2], 0, "bucket <= 5");
        assert_eq!(buckets[3], 1, "bucket <= 10");
        assert_eq!(buckets[9], 2, "bucket <= 1000");
        assert_eq!(get_metric(9_999_999), Err(Status::NotFound));
    }
}
