//! Test helpers shared by the safety and server unit tests: one policy that exercises
//! every action and stage, and a sink that records what it is given.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{Hit, HitSink, Policy, Screen};

/// Blocks violence on input and output and "Paris" on output, masks mainland phone
/// numbers, flags fraud terms; the example policy's `[input]` rules. The integration
/// tests load the same file.
pub const POLICY: &str = include_str!("../../tests/fixtures/moderation/policy.toml");

/// Records every hit and every finished request (id, number of hits).
#[derive(Default)]
pub struct Recorder {
    pub hits: Mutex<Vec<(String, Hit)>>,
    pub finished: Mutex<Vec<(String, usize)>>,
}

impl Recorder {
    pub fn hits(&self) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .map(|(_, h)| h.clone())
            .collect()
    }
}

impl HitSink for Recorder {
    fn hit(&self, request_id: &str, hit: &Hit) {
        self.hits
            .lock()
            .unwrap()
            .push((request_id.into(), hit.clone()));
    }
    fn finished(&self, request_id: &str, hits: &[Hit]) {
        self.finished
            .lock()
            .unwrap()
            .push((request_id.into(), hits.len()));
    }
}

/// A request's screen under `POLICY`, recording into the returned sink.
pub fn screen() -> (Arc<Screen>, Arc<Recorder>) {
    let policy = Policy::from_bytes(Path::new("test.toml"), POLICY.as_bytes()).expect("valid");
    let recorder = Arc::new(Recorder::default());
    let screen = Arc::new(Screen {
        policy: Arc::new(policy),
        sink: recorder.clone(),
        request_id: "r".into(),
        hits: Mutex::new(Vec::new()),
    });
    (screen, recorder)
}

/// `POLICY` written to a file of its own (for loading and reloading).
pub fn policy_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tessera-safety-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("policy.toml");
    std::fs::write(&path, POLICY).expect("write");
    path
}
