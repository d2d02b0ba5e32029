//! Tidy: core code must stay deterministic so the simulator can control it.
//!
//! Clippy's `disallowed-methods` catches calls it can resolve; this test also catches
//! imports, macros and fully qualified paths by text, in every core directory: log/,
//! replication/ and src/ outside the production runtime (src/runtime/) and the binary
//! entry point (src/main.rs). Benchmarks and test files may read real time.

use std::fs;
use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &[
    "tokio::",
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "rand::random",
    "std::thread::spawn",
    "thread::spawn(",
];

const CORE_DIRS: &[&str] = &["log/src", "replication/src", "src"];

/// Paths (relative to the workspace root) that are allowed to touch the real world.
const EXEMPT: &[&str] = &["src/runtime", "src/main.rs", "src/bin"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn violations(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in CORE_DIRS {
        let mut files = Vec::new();
        rust_files(&root.join(dir), &mut files);
        for file in files {
            let rel = file.strip_prefix(root).unwrap_or(&file);
            let rel_str = rel.to_string_lossy().replace('\\', "/");
            if EXEMPT.iter().any(|e| rel_str.starts_with(e)) {
                continue;
            }
            let text = fs::read_to_string(&file).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for pat in FORBIDDEN {
                    if code.contains(pat) {
                        found.push(format!(
                            "{rel_str}:{}: `{pat}` in core code: {}",
                            n + 1,
                            code
                        ));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn core_code_does_not_read_time_randomness_threads_or_tokio() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let found = violations(root);
    assert!(
        found.is_empty(),
        "core code must go through Clock / Network / seeded RNG:\n{}",
        found.join("\n")
    );
}

#[test]
fn tidy_detects_a_violation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let core = dir.path().join("replication/src");
    fs::create_dir_all(&core).expect("mkdir");
    fs::write(
        core.join("bad.rs"),
        "fn f() { let _ = std::time::Instant::now(); }\n",
    )
    .expect("write");
    fs::write(
        core.join("ok.rs"),
        "// Instant::now is mentioned in a comment only\n",
    )
    .expect("write");
    let runtime = dir.path().join("src/runtime");
    fs::create_dir_all(&runtime).expect("mkdir");
    fs::write(runtime.join("clock.rs"), "fn f() { tokio::time::sleep; }\n").expect("write");
    let found = violations(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("replication/src/bad.rs:1:"),
        "{found:?}"
    );
}
