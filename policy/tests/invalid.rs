//! One file per class of rejected input under `tests/invalid/`. Each starts with comment lines
//! `# document: N`, `# path: ...` and `# reason: ...` (a substring of the reason); the test
//! asserts the error names the file, that document, that field path and that reason, and that
//! nothing from the file is returned.

use std::path::Path;

use palisade_policy::error::DocRef;
use palisade_policy::load;

fn header<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
}

#[test]
fn every_invalid_file_is_rejected_with_file_document_path_and_reason() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("read invalid dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let mut checked = 0;
    for f in files {
        if f.extension().is_none_or(|e| e != "yaml" && e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read");
        let name = f.file_name().expect("name").to_string_lossy().to_string();
        let doc: usize = header(&text, "document")
            .unwrap_or_else(|| panic!("{name}: no `# document:` header"))
            .trim()
            .parse()
            .expect("document number");
        let path = header(&text, "path")
            .unwrap_or_else(|| panic!("{name}: no `# path:` header"))
            .trim();
        let reason = header(&text, "reason")
            .unwrap_or_else(|| panic!("{name}: no `# reason:` header"))
            .trim();
        let err = match load::load_file(&name, &text) {
            Ok(p) => panic!(
                "{name}: accepted ({} policies), expected an error at `{path}`",
                p.len()
            ),
            Err(e) => e,
        };
        let shown = err.to_string();
        assert_eq!(err.file, name, "{shown}");
        assert_eq!(err.document, DocRef::Document(doc), "{name}: {shown}");
        assert_eq!(err.path, path, "{name}: {shown}");
        assert!(
            err.reason.contains(reason),
            "{name}: reason `{}` lacks `{reason}`",
            err.reason
        );
        assert!(
            shown.contains(&name)
                && shown.contains(path)
                && shown.contains(&format!("document {doc}")),
            "{shown}"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} invalid files");
}
