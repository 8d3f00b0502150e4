//! What the generator reads about a server process from `/proc`: CPU time
//! (`/proc/PID/stat`, user + system, all threads) and resident memory
//! (`VmRSS` of `/proc/PID/status`).

use std::io;

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system, every thread) a process has used.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

/// CPU seconds the calling process has used.
pub fn self_cpu_seconds() -> io::Result<f64> {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat")?)
}

fn stat_cpu(stat: &str) -> io::Result<f64> {
    // The command name (field 2) may contain spaces: count from its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11, 12.
    let tick = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64 / TICKS_PER_SECOND)
            .ok_or_else(|| io::Error::other("malformed /proc stat"))
    };
    Ok(tick(11)? + tick(12)?)
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

/// A set of server processes (ejabberd is one BEAM process, but the option
/// takes a list), measured together.
#[derive(Debug, Clone, Default)]
pub struct Processes(pub Vec<u32>);

impl Processes {
    /// Parses `PID[,PID...]`.
    pub fn parse(s: &str) -> Result<Processes, String> {
        s.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("bad pid {p:?}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Processes)
    }

    /// Total CPU seconds; `None` without processes or when one vanished.
    pub fn cpu_seconds(&self) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        self.0.iter().map(|&p| cpu_seconds(p).ok()).sum()
    }

    /// Each process's CPU seconds, in order (`None` for one that vanished).
    pub fn each_cpu_seconds(&self) -> Vec<Option<f64>> {
        self.0.iter().map(|&p| cpu_seconds(p).ok()).collect()
    }

    /// Total resident memory in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        if self.0.is_empty() {
            return None;
        }
        self.0.iter().map(|&p| rss_kib(p).ok()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert!(rss_kib(me).unwrap() > 0);
        assert!(self_cpu_seconds().is_ok());
        let p = Processes::parse(&format!("{me},{me}")).unwrap();
        assert!(p.rss_kib().unwrap() >= 2 * rss_kib(me).unwrap() / 2);
        assert!(Processes::parse("x").is_err());
    }

    #[test]
    fn command_names_with_spaces_and_parens() {
        let stat = "42 (a b) c) S 1 1 1 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert!((stat_cpu(stat).unwrap() - 3.0).abs() < 1e-9);
    }
}
