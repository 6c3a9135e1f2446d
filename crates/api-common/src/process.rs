//! The `process_*` metrics, named and described as the official Prometheus clients do
//! (`docs/operations.md` sizes and alerts on them), read from `/proc/self` at each scrape.

use procfs::process::{LimitValue, Process};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads `/proc/self` when encoded; a value that cannot be read is left out rather than made
/// up.
#[derive(Debug)]
pub(crate) struct ProcessCollector;

/// One reading of `/proc/self`.
struct Sample {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

fn sample() -> Option<Sample> {
    let me = Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let start_time_seconds =
        procfs::boot_time_secs().ok().map(|boot| boot as f64 + stat.starttime as f64 / ticks);
    let max_fds = me.limits().ok().and_then(|l| match l.max_open_files.soft_limit {
        LimitValue::Value(n) => Some(n),
        LimitValue::Unlimited => None,
    });
    Some(Sample {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss * procfs::page_size(),
        virtual_bytes: stat.vsize,
        start_time_seconds,
        open_fds: me.fd_count().ok().map(|n| n as u64),
        max_fds,
    })
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(s) = sample() else { return Ok(()) };
        let help = "Total user and system CPU time spent in seconds";
        let cpu = encoder.encode_descriptor("process_cpu_seconds", help, None, MetricType::Counter)?;
        ConstCounter::new(s.cpu_seconds).encode(cpu)?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            s.resident_bytes as f64,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            s.virtual_bytes as f64,
        )?;
        if let Some(start) = s.start_time_seconds {
            let help = "Start time of the process since unix epoch in seconds";
            gauge(&mut encoder, "process_start_time_seconds", help, start)?;
        }
        if let Some(open) = s.open_fds {
            gauge(&mut encoder, "process_open_fds", "Number of open file descriptors", open as f64)?;
        }
        if let Some(max) = s.max_fds {
            gauge(&mut encoder, "process_max_fds", "Maximum number of open file descriptors", max as f64)?;
        }
        Ok(())
    }
}
