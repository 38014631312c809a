//! Property tests over the readers of untrusted input: config.json (any field replaced by any
//! JSON value) and GGUF files (bytes of the header changed, or cut short) are read or refused
//! with an error, never a panic. The request parser has its own, in `serve/api.rs`.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::{Fixture, GgufFixture};
use llm_worker_rbee::arch;
use llm_worker_rbee::config::HfConfig;
use llm_worker_rbee::ModelFiles;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// `cases` cases from a fixed seed, so that CI runs the same inputs every time; the
/// environment's PROPTEST_CASES and PROPTEST_RNG_SEED override both, for a deeper run by hand.
fn fuzz_config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = proptest::test_runner::RngSeed::Fixed(0x11e5);
    }
    config
}

/// Any JSON value, numbers at the edges of their types among them.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
            Just(1e-320),
            any::<f64>().prop_filter("finite", |x| x.is_finite()),
        ]
        .prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn fixture_config(id: &str) -> Map<String, Value> {
    let text = std::fs::read_to_string(Fixture::new(id).file("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

proptest! {
    #![proptest_config(fuzz_config(256))]

    #[test]
    fn any_config_field_set_to_any_value_is_read_or_refused(
        id in prop::sample::select(common::all_fixture_ids()),
        edits in prop::collection::vec((any::<prop::sample::Index>(), json_value()), 1..4),
    ) {
        let mut config = fixture_config(id);
        let keys: Vec<String> = config.keys().cloned().collect();
        for (index, value) in edits {
            config.insert(index.get(&keys).clone(), value);
        }
        let text = serde_json::to_string(&config).unwrap();
        if let Ok(cfg) = HfConfig::parse(Path::new("config.json"), &text) {
            let _ = arch::parse(&cfg);
        }
    }
}

/// The llama GGUF fixture's bytes, written once.
fn gguf_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(GgufFixture::new("llama-q4_0").file("model.gguf")).unwrap())
}

proptest! {
    #![proptest_config(fuzz_config(256))]

    #[test]
    fn a_gguf_with_header_bytes_changed_or_cut_short_is_read_or_refused(
        changes in prop::collection::vec((0usize..4096, any::<u8>()), 1..8),
        cut in prop::option::of(0usize..8192),
    ) {
        let mut bytes = gguf_bytes().to_vec();
        for (at, byte) in changes {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.gguf"), &bytes).unwrap();
        let _ = ModelFiles::open(dir.path());
    }
}
