//! Every registered architecture has what the suite needs to prove it (worker/README.md,
//! "Adding an architecture"): its fixtures in conformance/cases.toml and in the fixture lock,
//! a transformers reference in golden/reference/, and the configs transformers 4 and 5 write in
//! worker/tests/data/hf-configs/. GGUF fixtures likewise have their cases.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use llm_worker_rbee::{arch, gguf, synth};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("worker/ lives in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What is missing for the fixtures with these ids, one line each; `configs`: the
/// transformers configs too.
fn missing_data(ids: &[&str], cases: &toml::Table, lock: &str, configs: bool) -> Vec<String> {
    let listed: BTreeSet<&str> = cases["models"]["fixtures"]
        .as_array()
        .expect("models.fixtures is a list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let locked: BTreeSet<&str> = lock
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1)?.split('/').next())
        .collect();
    let root = root();
    let mut missing = Vec::new();
    for id in ids {
        if !listed.contains(id) {
            missing.push(format!(
                "`{id}` is not in [models] fixtures of conformance/cases.toml"
            ));
        }
        if !locked.contains(id) {
            missing.push(format!(
                "`{id}` has no files in conformance/fixtures.lock (`cargo xtask fixtures \
                 --update-lock`)"
            ));
        }
        for file in [format!("{id}.json"), format!("{id}.logits.safetensors")] {
            if !root.join("golden/reference").join(&file).is_file() {
                missing.push(format!(
                    "golden/reference/{file} is missing (`cargo xtask reference`)"
                ));
            }
        }
        for major in [4, 5].into_iter().filter(|_| configs) {
            let file = format!("worker/tests/data/hf-configs/{id}/transformers-{major}.json");
            if !root.join(&file).is_file() {
                missing.push(format!(
                    "{file} is missing (`python3 ci/reference/transformers_check.py configs`)"
                ));
            }
        }
    }
    missing
}

#[test]
fn every_registered_architecture_has_fixtures_cases_reference_and_configs() {
    let cases: toml::Table =
        toml::from_str(&read(&root().join("conformance/cases.toml"))).expect("cases.toml parses");
    let lock = read(&root().join("conformance/fixtures.lock"));
    let mut missing = Vec::new();
    for architecture in arch::ALL {
        let ids: Vec<&str> = architecture.fixtures().iter().map(|f| f.id).collect();
        if ids.is_empty() {
            missing.push(format!("{} has no fixture", architecture.name()));
        }
        missing.extend(missing_data(&ids, &cases, &lock, true));
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The fixtures made only as the source of GGUF fixtures (hidden size 256) need no
/// transformers configs of their own.
#[test]
fn every_fixture_synth_writes_is_a_case_and_every_gguf_case_is_a_fixture() {
    let cases: toml::Table =
        toml::from_str(&read(&root().join("conformance/cases.toml"))).expect("cases.toml parses");
    let lock = read(&root().join("conformance/fixtures.lock"));
    let ids: Vec<&str> = synth::wide_fixtures().iter().map(|f| f.id).collect();
    let missing = missing_data(&ids, &cases, &lock, false);
    assert!(missing.is_empty(), "{}", missing.join("\n"));

    let in_cases: BTreeSet<(String, String)> = cases["models"]["gguf"]
        .as_array()
        .expect("models.gguf is a list")
        .iter()
        .map(|g| {
            let field = |key: &str| g[key].as_str().expect("id and source").to_string();
            (field("id"), field("source"))
        })
        .collect();
    let written: BTreeSet<(String, String)> = synth::gguf_fixtures()
        .iter()
        .map(|g| (g.id.to_string(), g.source.to_string()))
        .collect();
    assert_eq!(
        in_cases, written,
        "[models] gguf of cases.toml against synth"
    );
    for spec in synth::gguf_fixtures() {
        let source = synth::fixture(spec.source).expect("a GGUF fixture's source is a fixture");
        assert!(
            gguf::of(source.architecture).is_some(),
            "{}: {} has no GGUF module",
            spec.id,
            source.architecture
        );
        assert!(
            lock.contains(&format!("  {}/", spec.id)),
            "{} is not locked",
            spec.id
        );
    }
}
