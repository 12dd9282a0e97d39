//! The layers of `src/` only point down: cli → pipeline / bench / serve → model → runtime → backend → ops → leaf
//! modules (weights, io, sample, the error type). Every `crate::<module>` path in a file must name its own module or
//! a lower one. `ops` (the op descriptors, their references and the `Backend` / `Exec` traits) sits below the backends
//! so that they implement the interface the runtime's executor calls without importing the runtime.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn rank(module: &str) -> Option<u32> {
    Some(match module {
        "main" | "cli" => 8,
        "pipeline" | "bench" | "serve" => 7,
        "model" => 6,
        "runtime" => 5,
        "backend" => 4,
        "ops" => 3,
        "weights" | "io" | "sample" => 2,
        "error" | "Error" | "Result" | "lib" => 0,
        _ => return None,
    })
}

/// Upward imports still to be removed: none (the list may only shrink; a file that no longer needs its entry fails
/// the test until the entry goes).
const KNOWN: &[(&str, &str)] = &[];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module of a source file: `src/model/gpt.rs` → `model`, `src/main.rs` → `main`.
fn module_of(rel: &str) -> String {
    let rest = rel.strip_prefix("src/").unwrap();
    rest.split(['/', '.']).next().unwrap().to_string()
}

#[test]
fn imports_only_point_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    files(&root.join("src"), &mut all);
    let mut upward = BTreeSet::new();
    for path in &all {
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        let from = module_of(&rel);
        let Some(r_from) = rank(&from) else {
            panic!("{rel}: top-level module `{from}` has no layer in tests/layers.rs");
        };
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                if line[..i].ends_with('$') {
                    continue; // `$crate::` in a macro
                }
                let rest = &line[i + 7..];
                // `crate::{a::b, C}` names several modules at once.
                let group = rest.strip_prefix('{').map(|g| g.split('}').next().unwrap_or(""));
                let items: Vec<&str> = group.map_or(vec![rest], |g| g.split(',').map(str::trim).collect());
                for item in items.into_iter().filter(|t| !t.is_empty()) {
                    let target: String = item.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    let Some(r_to) = rank(&target) else {
                        panic!("{rel}: `crate::{target}` names a module with no layer in tests/layers.rs");
                    };
                    if target != from && r_to >= r_from {
                        upward.insert((rel.clone(), target));
                    }
                }
            }
        }
    }
    let known: BTreeSet<(String, String)> = KNOWN.iter().map(|(f, t)| (f.to_string(), t.to_string())).collect();
    let new: Vec<_> = upward.difference(&known).collect();
    assert!(
        new.is_empty(),
        "imports that point up (or sideways) the layers: {new:?}"
    );
    let stale: Vec<_> = known.difference(&upward).collect();
    assert!(
        stale.is_empty(),
        "no longer needed, remove from KNOWN in tests/layers.rs: {stale:?}"
    );
}
