//! Owns the benchmark's view of the hypervisor: how much of the machine's CPU time the host
//! took from this VM ("steal", /proc/stat) while a measurement ran. On a shared host a
//! measurement that lost its vCPUs for milliseconds at a time is no measurement of a path: in
//! one run here a sockperf measurement gave 4,432 round trips/s (p99 1,381 µs) while the host
//! took 18.7% of the CPU time, and 13,606/s (p99 174 µs) when run again. The comparison runs
//! such a measurement again (`compare.rs`).
use std::io;

/// Above this share of the CPU time taken by the host during a measurement, the measurement is
/// disturbed. Quiet measurements here see 0–1%.
pub const DISTURBED: f64 = 0.03;

/// The machine's CPU time counters at one moment (all CPUs, in clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    steal: u64,
    total: u64,
}

impl CpuTimes {
    /// The counters now.
    pub fn now() -> io::Result<Self> {
        let text = std::fs::read_to_string("/proc/stat")?;
        parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/stat has no `cpu` line with a steal column",
            )
        })
    }

    /// The share of the CPU time since `earlier` that the host took (0.0 when no time passed).
    pub fn steal_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        let steal = self.steal.saturating_sub(earlier.steal);
        if total == 0 {
            0.0
        } else {
            steal as f64 / total as f64
        }
    }
}

/// The first line of /proc/stat: `cpu user nice system idle iowait irq softirq steal guest
/// guest_nice`. Guest time is already counted in user and nice, so the total is the first eight.
fn parse(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 8 {
        return None;
    }
    Some(CpuTimes {
        steal: fields[7],
        total: fields.iter().sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_its_share_of_all_cpu_time() {
        let before =
            parse("cpu  100 0 50 800 0 0 0 50 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n").expect("parses");
        assert_eq!(
            before,
            CpuTimes {
                steal: 50,
                total: 1000
            }
        );
        let after = parse("cpu  150 0 60 1000 0 0 10 80 0 0\n").expect("parses");
        // 300 ticks passed, 30 of them stolen.
        assert!((after.steal_since(&before) - 0.1).abs() < 1e-12);
        assert_eq!(before.steal_since(&before), 0.0);
    }

    #[test]
    fn a_stat_without_steal_is_refused() {
        assert_eq!(parse("cpu  1 2 3 4\n"), None);
        assert_eq!(parse("intr 5\n"), None);
    }
}
