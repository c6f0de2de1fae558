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

impl Postgres {
    fn clean(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}
