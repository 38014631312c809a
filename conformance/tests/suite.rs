//! The harness logic on a small case file: missing goldens, expected failures that fail or
//! unexpectedly pass, changed goldens, and absent models. One test, because insta reads its
//! settings once per process.

use std::path::Path;

use conformance::cases::Cases;
use conformance::paths::{workspace_root, Paths};
use conformance::record::Outcome;
use conformance::suite::Suite;
use conformance::trial::{expand, Selection, Transport};
use llm_worker_rbee::{synth, Backend, Dtype};

const CASES: &str = r#"
max_tokens = 16
backends = ["cpu"]
dtypes = ["f32"]
seeds = ["greedy"]
sampling = { temperature = 0.8, top_p = 0.95 }
models = { fixtures = ["qwen2", "absent"] }
tolerances.cpu-f32 = { reference_logits = 1e-3, recompute_logits = 1e-4 }

[[prompts]]
id = "single-token"
ids = [300]
"#;

fn outcomes(root: &Path, extra: &str) -> Vec<(String, Outcome, String)> {
    outcomes_on(root, extra, Backend::Cpu, Transport::Library)
}

fn outcomes_on(
    root: &Path,
    extra: &str,
    backend: Backend,
    transport: Transport,
) -> Vec<(String, Outcome, String)> {
    let paths = Paths {
        cases: root.join("cases.toml"),
        fixtures: root.join("fixtures"),
        golden: root.join("golden"),
        records: root.join("records"),
        models: Vec::new(),
        worker_binary: None,
    };
    std::fs::write(&paths.cases, format!("{CASES}\n{extra}")).unwrap();
    let cases = Cases::load(&paths.cases).unwrap();
    let selection = Selection {
        backends: vec![backend],
        dtypes: vec![Dtype::F32],
        transport,
        engine: None,
    };
    let specs = expand(&cases, &selection, &cases.models.ids());
    let suite = Suite::new(cases, paths);
    specs
        .iter()
        .map(|spec| {
            let record = suite.run(spec);
            (
                record.name,
                record.outcome,
                record.message.unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn trials_pass_fail_are_expected_to_fail_or_are_ignored_as_the_goldens_say() {
    // New snapshots are written as goldens, changed ones stay pending: for this test's own
    // temporary golden folder only.
    std::env::set_var("INSTA_UPDATE", "unseen");
    let root = tempfile::tempdir().unwrap();
    let fixture = synth::fixture("qwen2").unwrap();
    synth::write_fixture(&fixture, &root.path().join("fixtures/qwen2")).unwrap();
    let reference = root.path().join("golden/reference");
    std::fs::create_dir_all(&reference).unwrap();
    let committed = workspace_root().join("golden/reference");
    for file in ["qwen2.json", "qwen2.logits.safetensors"] {
        std::fs::copy(committed.join(file), reference.join(file)).unwrap();
    }
    let trial = "qwen2/cpu-f32/greedy/single-token";

    // First run: the snapshot is written, the trial passes (it equals the reference), and the
    // model that is not there is ignored with the reason.
    let first = outcomes(root.path(), "");
    assert_eq!(first[0].0, trial);
    assert_eq!(first[0].1, Outcome::Passed, "{}", first[0].2);
    assert_eq!(first[1].1, Outcome::Ignored);
    assert!(
        first[1].2.contains("model `absent` is not present"),
        "{}",
        first[1].2
    );
    assert!(root
        .path()
        .join("records/qwen2__cpu-f32__greedy__single-token.json")
        .is_file());

    // Listed as an expected failure while it passes: the run fails, so the list cannot go stale.
    let listed = "[[expected_failures]]\ntrials = \"qwen2/cpu-f32/*\"\nreason = \"a test\"\n";
    let stale = outcomes(root.path(), listed);
    assert_eq!(stale[0].1, Outcome::Failed);
    assert!(
        stale[0]
            .2
            .contains("lists it as an expected failure (a test)"),
        "{}",
        stale[0].2
    );

    // A golden that says otherwise: a failure with the diff, or an expected failure if listed.
    let golden = root
        .path()
        .join("golden/snapshots/qwen2__cpu-f32__greedy__single-token.snap");
    let text = std::fs::read_to_string(&golden).unwrap();
    std::fs::write(&golden, text.replace("\"max_tokens\"", "\"eos\"")).unwrap();
    let differs = outcomes(root.path(), "");
    assert_eq!(differs[0].1, Outcome::Failed);
    assert!(
        differs[0]
            .2
            .contains("-  \"stop_reason\": \"eos\"\n+  \"stop_reason\": \"max_tokens\""),
        "{}",
        differs[0].2
    );
    let expected = outcomes(root.path(), listed);
    assert_eq!(expected[0].1, Outcome::ExpectedFailure);
    assert!(
        expected[0].2.starts_with("expected failure (a test)"),
        "{}",
        expected[0].2
    );

    // A backend this binary was built without fails with the reason, it is not skipped.
    if !llm_worker_rbee::backend::is_compiled_in(Backend::Cuda) {
        let cuda = outcomes_on(root.path(), "", Backend::Cuda, Transport::Library);
        assert_eq!(cuda[0].0, "qwen2/cuda-f32/greedy/single-token");
        assert_eq!(cuda[0].1, Outcome::Failed);
        assert!(
            cuda[0]
                .2
                .contains("backend `cuda`: not compiled into this binary"),
            "{}",
            cuda[0].2
        );
    }

    // Over HTTP without the worker binary: a failure that says how to get it.
    let http = outcomes_on(root.path(), "", Backend::Cpu, Transport::Http);
    assert_eq!(http[0].1, Outcome::Failed);
    assert!(
        http[0]
            .2
            .contains("needs the worker binary in CONFORMANCE_WORKER"),
        "{}",
        http[0].2
    );
}
