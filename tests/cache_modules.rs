//! The cache's files import each other in one direction only: the
//! graph of `super::<module>` (and `crate::cache::<module>`) references
//! between the files of `src/cache/` has no cycle. Read from the source,
//! doc links included; inside a file's `mod tests`, a sibling is
//! `super::super::<module>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The sibling modules `text` (the file `name`) refers to.
fn references(name: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut in_tests = false;
    for line in text.lines() {
        if line.starts_with("mod tests") {
            in_tests = true;
        }
        let prefixes: &[&str] = if in_tests {
            &["super::super::", "crate::cache::"]
        } else {
            &["super::", "crate::cache::"]
        };
        for prefix in prefixes {
            let mut rest = line;
            while let Some(at) = rest.find(prefix) {
                let after = &rest[at + prefix.len()..];
                // `super::{a, b::c}`: each name in the group.
                let names: Vec<&str> = if let Some(group) = after.strip_prefix('{') {
                    let group = group.split('}').next().unwrap_or_default();
                    group.split(',').map(str::trim).collect()
                } else {
                    vec![after]
                };
                for n in names {
                    let module: String = n
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if module != name && modules.contains(&module) {
                        found.insert(module);
                    }
                }
                rest = after;
            }
        }
    }
    found
}

/// A cycle through `at`, if the graph has one reachable from it.
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    at: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(start) = path.iter().position(|p| p == at) {
        let mut cycle = path[start..].to_vec();
        cycle.push(at.to_owned());
        return Some(cycle);
    }
    if done.contains(at) {
        return None;
    }
    path.push(at.to_owned());
    for next in graph.get(at).into_iter().flatten() {
        if let Some(found) = cycle(graph, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(at.to_owned());
    None
}

#[test]
fn no_two_files_of_the_cache_import_each_other() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cache");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("src/cache is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            files.insert(name, std::fs::read_to_string(&path).expect("a source file"));
        }
    }
    let modules: BTreeSet<String> = files.keys().filter(|m| *m != "mod").cloned().collect();
    assert!(modules.len() >= 10, "the cache's files were not found");
    let graph: BTreeMap<String, BTreeSet<String>> = files
        .iter()
        .filter(|(name, _)| *name != "mod")
        .map(|(name, text)| (name.clone(), references(name, text, &modules)))
        .collect();
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(found) = cycle(&graph, module, &mut Vec::new(), &mut done) {
            panic!(
                "src/cache imports in a loop: {}\nthe graph: {graph:#?}",
                found.join(" -> ")
            );
        }
    }
}

#[test]
fn the_reader_sees_grouped_and_test_imports() {
    let modules: BTreeSet<String> = ["a", "b", "c", "d"].map(String::from).into();
    let text = "use super::{a, b::X};\n/// [`Y`](crate::cache::c::Y)\nmod tests {\n    use super::*;\n    use super::super::d::Z;\n}\n";
    let found = references("self", text, &modules);
    assert_eq!(found, ["a", "b", "c", "d"].map(String::from).into());
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    let found = cycle(&graph, "a", &mut Vec::new(), &mut BTreeSet::new());
    assert_eq!(found, Some(vec!["a".into(), "b".into(), "a".into()]));
}
