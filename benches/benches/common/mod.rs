//! The clock the benches measure with, chosen by `VMVAULT_BENCH_CLOCK`:
//!
//! - `wall` (default): wall-clock time, criterion's usual measurement;
//! - `cpu`: CPU time, of the calling thread for the single-threaded stage benches and of
//!   the whole process for multi-threaded ones (restore). On a machine shared with other
//!   work, wall time measures the neighbours as much as the code; CPU time much less
//!   (caches and memory bandwidth are still shared).

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::Throughput;
use std::time::Instant;

/// A wall or CPU clock; values are nanoseconds.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// Wall-clock time.
    Wall,
    /// `CLOCK_THREAD_CPUTIME_ID`.
    ThreadCpu,
    /// `CLOCK_PROCESS_CPUTIME_ID`.
    ProcessCpu,
}

impl Clock {
    /// The clock `VMVAULT_BENCH_CLOCK` asks for; `multi_threaded` benches get process CPU
    /// time instead of thread CPU time.
    pub fn from_env(multi_threaded: bool) -> Self {
        match std::env::var("VMVAULT_BENCH_CLOCK").as_deref() {
            Ok("cpu") if multi_threaded => Clock::ProcessCpu,
            Ok("cpu") => Clock::ThreadCpu,
            Ok("wall") | Err(_) => Clock::Wall,
            Ok(other) => panic!("VMVAULT_BENCH_CLOCK={other}: use wall or cpu"),
        }
    }
}

fn cpu_ns(id: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and `id` one of the two CPU-time clocks
    // every Linux supports; clock_gettime writes nothing else.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// Where a measurement started.
pub enum Start {
    /// A wall-clock instant.
    Wall(Instant),
    /// CPU nanoseconds.
    Cpu(f64),
}

impl Measurement for Clock {
    type Intermediate = Start;
    type Value = f64;

    fn start(&self) -> Start {
        match self {
            Clock::Wall => Start::Wall(Instant::now()),
            Clock::ThreadCpu => Start::Cpu(cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID)),
            Clock::ProcessCpu => Start::Cpu(cpu_ns(libc::CLOCK_PROCESS_CPUTIME_ID)),
        }
    }

    fn end(&self, i: Start) -> f64 {
        match (self, i) {
            (_, Start::Wall(t)) => t.elapsed().as_nanos() as f64,
            (Clock::ProcessCpu, Start::Cpu(c)) => cpu_ns(libc::CLOCK_PROCESS_CPUTIME_ID) - c,
            (_, Start::Cpu(c)) => cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID) - c,
        }
    }

    fn add(&self, v1: &f64, v2: &f64) -> f64 {
        v1 + v2
    }

    fn zero(&self) -> f64 {
        0.0
    }

    fn to_f64(&self, value: &f64) -> f64 {
        *value
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &NsFormatter
    }
}

/// Formats nanoseconds as times and bytes per nanosecond as MiB/s or GiB/s, as
/// criterion's wall-time formatter does.
struct NsFormatter;

impl ValueFormatter for NsFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = if typical < 1e3 {
            (1.0, "ns")
        } else if typical < 1e6 {
            (1e3, "µs")
        } else if typical < 1e9 {
            (1e6, "ms")
        } else {
            (1e9, "s")
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }

    fn scale_throughputs(
        &self,
        typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (per, bytes) = match throughput {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => (*n as f64, true),
            Throughput::Elements(n) | Throughput::Bits(n) => (*n as f64, false),
            _ => (1.0, false),
        };
        let rate = |ns: f64| per * 1e9 / ns;
        if !bytes {
            values.iter_mut().for_each(|v| *v = rate(*v));
            return "elem/s";
        }
        let (div, unit) = if rate(typical) >= f64::from(1u32 << 30) {
            (f64::from(1u32 << 30), "GiB/s")
        } else {
            (f64::from(1u32 << 20), "MiB/s")
        };
        values.iter_mut().for_each(|v| *v = rate(*v) / div);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}
