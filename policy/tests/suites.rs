//! Runs every suite under `tests/suites/` and `tests/suites-offline/` (recursively) and asserts
//! every case matches; on a mismatch the whole table is printed. `suites-offline/` holds suites the
//! lab cannot replay with real packets (IPv6 pods), so `palisade lab test` skips them.

use std::path::{Path, PathBuf};

use palisade_policy::load;
use palisade_policy::suite::{CaseResult, Suite, looks_like_suite, table};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read suites dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

fn run_suite(path: &Path) -> Result<Vec<CaseResult>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let suite = Suite::parse(&path.display().to_string(), &text).map_err(|e| e.to_string())?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut extra = Vec::new();
    for rel in suite.policies_from() {
        let p = base.join(rel);
        let mut files = Vec::new();
        if p.is_dir() {
            walk(&p, &mut files);
        } else {
            files.push(p);
        }
        for f in files {
            let t = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            extra.extend(load::load_file(&f.display().to_string(), &t).map_err(|e| e.to_string())?);
        }
    }
    let engine = suite.build(extra).map_err(|e| e.to_string())?;
    Ok(suite
        .run(&engine)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(r, _)| r)
        .collect())
}

#[test]
fn every_suite_case_matches() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/suites");
    let mut files = Vec::new();
    walk(&root, &mut files);
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/suites-offline"),
        &mut files,
    );
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut suites = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read suite");
        if !looks_like_suite(&text) {
            continue;
        }
        suites += 1;
        match run_suite(&f) {
            Ok(r) => results.extend(r),
            Err(e) => errors.push(e),
        }
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 || !errors.is_empty() {
        panic!(
            "{}\n{} passed, {} failed\ninvalid suites:\n{}",
            table(&results),
            results.len() - failed,
            failed,
            errors.join("\n")
        );
    }
    assert!(suites > 0, "no suites found under {}", root.display());
    println!("{suites} suites, {} cases passed", results.len());
}
