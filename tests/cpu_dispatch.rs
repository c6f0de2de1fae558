//! CPU feature dispatch has one owner: `src/ops/cpu_features.rs` decides once per process
//! which instruction-set level the kernels use (capped by `TESSERA_CPU_FEATURES`), and
//! every kernel asks it. A direct `is_x86_feature_detected!` (or cpuid) anywhere else in
//! `src/` would bypass the cap, so a forced `avx2` or `scalar` run would silently use a
//! faster path than asked: this source scan fails on one.
//!
//! Also checks, through the real binary, that a bad value stops the process at start
//! with a message naming the value and what the CPU has.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The one file allowed to ask the CPU.
const OWNER: &str = "src/ops/cpu_features.rs";
/// Ways of asking the CPU for its features at run time.
const PROBES: [&str; 5] = [
    "is_x86_feature_detected",
    "is_aarch64_feature_detected",
    "is_arm_feature_detected",
    "__cpuid",
    "has_cpuid",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `path:line: text` for every line of `src` outside comments naming a probe.
fn probes_in(rel: &str, src: &str) -> Vec<String> {
    src.lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.split("//").next().unwrap_or_default();
            PROBES.iter().any(|p| code.contains(p))
        })
        .map(|(i, line)| format!("{rel}:{}: {}", i + 1, line.trim()))
        .collect()
}

#[test]
fn only_cpu_features_asks_the_cpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let (mut owner_probes, mut strays) = (0, Vec::new());
    for path in files {
        let rel = path
            .strip_prefix(root)
            .expect("under the crate")
            .to_string_lossy()
            .replace('\\', "/");
        let src = fs::read_to_string(&path).expect("read a source file");
        let found = probes_in(&rel, &src);
        if rel == OWNER {
            owner_probes += found.len();
        } else {
            strays.extend(found);
        }
    }
    // The scan must see the owner's own probes, or it checks nothing.
    assert!(
        owner_probes > 0,
        "no probe found in {OWNER}: the scan is broken"
    );
    assert!(
        strays.is_empty(),
        "CPU features are asked outside {OWNER}; call ops::cpu_features::{{avx2, avx512, \
         avx512_vnni, host}} instead:\n{}",
        strays.join("\n")
    );
}

#[test]
fn the_scan_sees_a_direct_call() {
    let src = "fn f() -> bool {\n    // is_x86_feature_detected! in a comment is fine\n    \
               std::is_x86_feature_detected!(\"avx2\")\n}\n";
    assert_eq!(
        probes_in("src/x.rs", src),
        ["src/x.rs:3: std::is_x86_feature_detected!(\"avx2\")"]
    );
}

/// Runs `tessera COMMAND --model /nonexistent/model.gguf …` with
/// `TESSERA_CPU_FEATURES=value`: the level is decided before the model is opened (and
/// before `serve` binds), so a bad value must be the error reported.
fn run_with(command: &str, value: &str) -> (bool, String) {
    let mut args = vec![command, "--model", "/nonexistent/model.gguf"];
    args.extend(match command {
        "serve" => ["--port", "0"],
        _ => ["--prompt", "hi"],
    });
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env("TESSERA_CPU_FEATURES", value)
        .output()
        .expect("run tessera");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_value_stops_the_process_naming_it() {
    for command in ["serve", "generate"] {
        let (ok, stderr) = run_with(command, "sse9");
        assert!(!ok, "{command}");
        assert!(
            stderr.contains("TESSERA_CPU_FEATURES=\"sse9\" is not a level"),
            "{command}: {stderr}"
        );
        assert!(stderr.contains("this CPU has"), "{command}: {stderr}");
    }
    // A valid level passes the check and fails later, on the missing model.
    let (ok, stderr) = run_with("generate", "scalar");
    assert!(!ok);
    assert!(!stderr.contains("TESSERA_CPU_FEATURES"), "{stderr}");
    assert!(stderr.contains("nonexistent"), "{stderr}");
}
