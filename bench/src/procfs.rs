//! What `/proc` and `getrusage` tell about the two processes of a run: the server's peak
//! resident set (VmHWM, for a pid on this machine, given or found from its listening
//! port) and this client's own CPU time (user + system, all threads).

use std::fs;

use crate::error::BenchError;

/// `VmHWM` of `pid` in bytes: the peak resident set since the process started.
pub fn peak_rss_bytes(pid: u32) -> Result<u64, BenchError> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

/// `VmRSS` of `pid` in bytes: the resident set now.
pub fn rss_bytes(pid: u32) -> Result<u64, BenchError> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, field: &str) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text =
        fs::read_to_string(&path).map_err(|e| BenchError::Proc(format!("reading {path}: {e}")))?;
    parse_status_kib(&text, field)
        .ok_or_else(|| BenchError::Proc(format!("{path} has no `{field}` line")))
}

/// The value of a `Name:   1234 kB` line of /proc/<pid>/status.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Socket inodes listening on `port` (any address) in a /proc/net/tcp{,6} table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols.get(1)?.rsplit_once(':')?.1;
            let matches =
                u16::from_str_radix(local_port, 16).ok()? == port && *cols.get(3)? == LISTEN;
            matches.then(|| cols.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

/// The pid of the process listening on TCP `port` on this machine (needs permission to
/// read other processes' fds: same user or root).
pub fn pid_listening_on(port: u16) -> Result<u32, BenchError> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return Err(BenchError::Proc(format!(
            "no socket listens on port {port}"
        )));
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let procs =
        fs::read_dir("/proc").map_err(|e| BenchError::Proc(format!("listing /proc: {e}")))?;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = fs::read_link(fd.path()) {
                if targets.iter().any(|t| link.as_os_str() == t.as_str()) {
                    return Ok(pid);
                }
            }
        }
    }
    Err(BenchError::Proc(format!(
        "port {port} is listening but no readable process owns it"
    )))
}

/// CPU seconds (user + system) this process has used so far, all threads.
pub fn client_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass; a zeroed rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer; the call cannot fail with these arguments.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_fields() {
        let s = "Name:\tllama-server\nVmPeak:\t 200 kB\nVmHWM:\t  123456 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_status_kib(s, "VmHWM:"), Some(123456));
        assert_eq!(parse_status_kib(s, "VmRSS:"), Some(1000));
        assert_eq!(parse_status_kib(s, "VmSwap:"), None);
        assert!(peak_rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn finds_listening_sockets_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n\
   1: 0100007F:1F90 0100007F:D3B2 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0\n\
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0\n";
        assert_eq!(listening_inodes(table, 8080), vec![4242]);
        assert_eq!(listening_inodes(table, 80), vec![77]);
        assert!(listening_inodes(table, 81).is_empty());
    }

    #[test]
    fn finds_own_listener_pid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port).unwrap(), std::process::id());
    }

    #[test]
    fn cpu_time_grows() {
        let before = client_cpu_seconds();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(client_cpu_seconds() > before);
    }
}
