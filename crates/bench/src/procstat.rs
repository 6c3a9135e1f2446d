//! Memory and CPU time of server processes, read from `/proc`.
//!
//! Each given PID is sampled together with all of its descendants (nginx workers, forked
//! helpers), so one PID stands for one server.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_KIB: u64 = 4;

/// One server (a PID and its descendants) at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Sample {
    pub rss_kib: u64,
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
    /// Processes counted (the PID and its live descendants); 0 when the PID is gone.
    pub processes: u32,
}

struct Proc {
    ppid: u32,
    cpu_ticks: u64,
}

/// Samples every root PID with its descendants.
pub fn sample(roots: &[u32]) -> Vec<Sample> {
    let procs = all_processes();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, p) in &procs {
        children.entry(p.ppid).or_default().push(pid);
    }
    roots
        .iter()
        .map(|&root| {
            let mut out = Sample::default();
            let mut stack = vec![root];
            // Bounded: every PID is visited once at most.
            let mut budget = procs.len() + 1;
            while let Some(pid) = stack.pop() {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                let Some(p) = procs.get(&pid) else { continue };
                out.processes += 1;
                out.cpu_s += p.cpu_ticks as f64 / TICKS_PER_SECOND;
                out.rss_kib += rss_kib(pid).unwrap_or(0);
                stack.extend(children.get(&pid).into_iter().flatten());
            }
            out
        })
        .collect()
}

/// The command name of a PID, for reports.
pub fn name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or_else(|_| "?".into(), |s| s.trim().to_string())
}

fn all_processes() -> HashMap<u32, Proc> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some(p) =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().as_deref().and_then(parse_stat)
        {
            out.insert(pid, p);
        }
    }
    out
}

/// Parses `/proc/<pid>/stat`: fields after the parenthesised command name, which may itself
/// contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<Proc> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3); ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Proc { ppid, cpu_ticks: utime + stime })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE_KIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "42 (my (odd) name) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10";
        let p = parse_stat(line).unwrap();
        assert_eq!((p.ppid, p.cpu_ticks), (7, 300));
    }

    #[test]
    fn this_process_is_sampled() {
        let s = sample(&[std::process::id()])[0];
        assert!(s.processes >= 1 && s.rss_kib > 0);
        assert_eq!(sample(&[u32::MAX])[0].processes, 0);
    }
}
