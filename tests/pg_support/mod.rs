//! A throwaway PostgreSQL server for tests: `scripts/postgres.sh run` (Debian's package,
//! installed when missing; the test fails with the script's reason when it cannot be)
//! on a free loopback port, a fresh database per caller, stopped by pid on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Postgres {
    child: Child,
    port: u16,
    dir: PathBuf,
    databases: AtomicUsize,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("address").port()
}

impl Postgres {
    /// Starts a new cluster (installing PostgreSQL may take minutes on a fresh machine).
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tessera-pg-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_port();
        let log_path = dir.with_extension("log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh");
        let child = Command::new("bash")
            .arg(script)
            .arg("run")
            .arg(&dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("bash runs scripts/postgres.sh");
        let mut pg = Self {
            child,
            port,
            dir,
            databases: AtomicUsize::new(0),
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        while postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).is_err() {
            if let Ok(Some(status)) = pg.child.try_wait() {
                let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("PostgreSQL did not start ({status}); scripts/postgres.sh said:\n{said}");
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL not ready after 10 minutes"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://tessera@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new empty database; its URL.
    pub fn new_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{n}");
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("connect to the test cluster");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        self.url(&name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.resume();
        // SIGINT: PostgreSQL's fast shutdown (the server is this child, see the script).
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.clean();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.clean();
    }
}

/// The pids of `root`'s descendants (from `/proc/*/stat`), parents before children.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after its `)`.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.split_off(1)
}

impl Postgres {
    /// Sends `signal` to the server, then to every process it started (its backends; the
    /// server first, so a stopped one forks no new backend unseen), by pid.
    fn signal_all(&self, signal: &str) {
        let send = |pid: u32| {
            // A backend may have exited since the listing: nothing to say then.
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        };
        let root = self.child.id();
        send(root);
        descendants(root).into_iter().for_each(send);
    }

    /// Freezes the server and its backends (SIGSTOP): connections stay open, every
    /// query hangs until `resume`.
    pub fn pause(&self) {
        self.signal_all("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal_all("-CONT");
    }

    fn clean(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}
