//! Architecture detection and config parsing: the forms transformers 4.x and 5.x write, and
//! every way a config can ask for something the worker cannot honour.

mod common;

use std::path::{Path, PathBuf};

use common::{all_fixture_ids, Fixture};
use llm_worker_rbee::arch;
use llm_worker_rbee::config::{HfConfig, RopeScaling};
use llm_worker_rbee::model::{ArchConfig, Window};
use serde_json::{json, Map, Value};

fn data(id: &str, major: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hf-configs")
        .join(id)
        .join(format!("transformers-{major}.json"))
}

/// The config.json of a fixture, as a JSON object to edit.
fn fixture_config(id: &str) -> Map<String, Value> {
    let text = std::fs::read_to_string(Fixture::new(id).file("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn parse(config: &Map<String, Value>) -> Result<ArchConfig, String> {
    let text = serde_json::to_string(config).unwrap();
    let cfg = HfConfig::parse(Path::new("config.json"), &text).map_err(|e| e.to_string())?;
    arch::parse(&cfg)
        .map(|p| p.config)
        .map_err(|e| e.to_string())
}

fn with(id: &str, edits: Value) -> Map<String, Value> {
    let mut config = fixture_config(id);
    for (key, value) in edits.as_object().unwrap() {
        if value.is_null() {
            config.remove(key);
        } else {
            config.insert(key.clone(), value.clone());
        }
    }
    config
}

fn parse_err(config: &Map<String, Value>) -> String {
    match parse(config) {
        Ok(arch) => panic!("expected an error, parsed {:?}", arch.architecture),
        Err(message) => message,
    }
}

#[test]
fn configs_written_by_transformers_4_and_5_parse_like_the_fixture() {
    for id in all_fixture_ids() {
        let fixture = Fixture::new(id);
        let own_cfg = HfConfig::load(&fixture.file("config.json")).unwrap();
        let own = arch::parse(&own_cfg).unwrap().config;
        assert_eq!(
            own_cfg.unread_keys(),
            Vec::<String>::new(),
            "{id}: fixture config"
        );
        // transformers 4 keeps a 5.x `rope_parameters` as an unknown key and writes its own
        // `rope_theta` 10000 beside it, which is what it would compute with: the worker refuses
        // the contradiction.
        let five_only = own_cfg.value("rope_parameters").is_some();
        for major in [4, 5] {
            let path = data(id, major);
            let cfg = HfConfig::load(&path).unwrap();
            if five_only && major == 4 {
                let error = arch::parse(&cfg).err().expect("refused").to_string();
                assert!(
                    error.contains("field `rope_theta`: is 10000 at the top level but 500000"),
                    "{id}: {error}"
                );
                continue;
            }
            let arch = arch::parse(&cfg)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .config;
            let what = format!("{id}, transformers {major}");
            assert_eq!(arch.architecture, own.architecture, "{what}");
            assert_eq!(arch.dims, own.dims, "{what}");
            assert_eq!(arch.rope, own.rope, "{what}");
            assert_eq!(arch.window, own.window, "{what}");
            assert_eq!(arch.tie_word_embeddings, own.tie_word_embeddings, "{what}");
            assert_eq!(
                cfg.unread_keys(),
                Vec::<String>::new(),
                "{what}: keys nobody read"
            );
        }
    }
}

#[test]
fn the_5x_form_keeps_rope_inside_rope_parameters() {
    let text = std::fs::read_to_string(data("phi", 5)).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    assert!(value.get("rope_theta").is_none());
    assert_eq!(
        value["rope_parameters"]["partial_rotary_factor"],
        json!(0.5)
    );
    let arch = arch::parse(&HfConfig::load(&data("phi", 5)).unwrap())
        .unwrap()
        .config;
    assert_eq!(arch.rope.partial_rotary_factor, 0.5);
}

#[test]
fn each_fixture_detects_its_architecture() {
    for spec in llm_worker_rbee::synth::fixtures() {
        assert_eq!(
            parse(&fixture_config(spec.id)).unwrap().architecture,
            spec.architecture
        );
    }
}

#[test]
fn architectures_is_used_when_model_type_is_absent() {
    let config = with(
        "qwen2",
        json!({"model_type": null, "architectures": ["Qwen2ForCausalLM"]}),
    );
    assert_eq!(parse(&config).unwrap().architecture.name(), "qwen2");
    let config = with(
        "stablelm",
        json!({"model_type": null, "architectures": ["StableLmForCausalLM"]}),
    );
    assert_eq!(parse(&config).unwrap().architecture.name(), "stablelm");
}

#[test]
fn an_unknown_architecture_names_what_was_found_and_what_is_supported() {
    let message = parse_err(&with("llama", json!({"model_type": "gpt_neox"})));
    assert!(message.contains("`gpt_neox`"), "{message}");
    assert!(message.contains("field `model_type`"), "{message}");
    for arch in arch::ALL {
        assert!(message.contains(arch.name()), "{message}");
    }
    let message = parse_err(&with(
        "llama",
        json!({"model_type": null, "architectures": ["GPT2LMHeadModel"]}),
    ));
    assert!(
        message.contains("`GPT2LMHeadModel`") && message.contains("field `architectures`"),
        "{message}"
    );
    let message = parse_err(&with(
        "llama",
        json!({"model_type": null, "architectures": null}),
    ));
    assert!(
        message.contains("missing") && message.contains("qwen2"),
        "{message}"
    );
}

#[test]
fn malformed_and_incomplete_configs_name_the_problem() {
    let err = HfConfig::parse(Path::new("config.json"), "{\"model_type\": ").unwrap_err();
    assert!(err.to_string().contains("not valid JSON"), "{err}");
    let err = HfConfig::parse(Path::new("config.json"), "[1, 2]").unwrap_err();
    assert!(err.to_string().contains("JSON object"), "{err}");
    let message = parse_err(&with("llama", json!({"hidden_size": null})));
    assert!(
        message.contains("field `hidden_size`: required"),
        "{message}"
    );
    let message = parse_err(&with("llama", json!({"num_attention_heads": "four"})));
    assert!(
        message.contains("field `num_attention_heads`") && message.contains("integer"),
        "{message}"
    );
    let message = parse_err(&with("mistral", json!({"num_key_value_heads": 3})));
    assert!(
        message.contains("num_key_value_heads") && message.contains("divide"),
        "{message}"
    );
}

#[test]
fn epsilons_and_rotary_bases_that_cannot_be_computed_with_are_refused() {
    let cases = [
        ("llama", "rope_theta", json!(0.0)),
        ("llama", "rope_theta", json!(-1.0)),
        ("llama", "rms_norm_eps", json!(0.0)),
        ("qwen3", "rms_norm_eps", json!(-1e-6)),
        ("phi", "layer_norm_eps", json!(0.0)),
        ("starcoder2", "norm_epsilon", json!(-1.0)),
    ];
    for (id, key, value) in cases {
        let message = parse_err(&with(id, json!({ key: value })));
        assert!(
            message.contains(&format!("field `{key}`")) && message.contains("positive, finite"),
            "{id} {key}: {message}"
        );
    }
    // In the transformers 5 form too.
    let message = parse_err(&with(
        "llama",
        json!({"rope_theta": null, "rope_parameters": {"rope_type": "default", "rope_theta": 0.0}}),
    ));
    assert!(
        message.contains("rope_theta") && message.contains("positive, finite"),
        "{message}"
    );
}

#[test]
fn settings_a_module_does_not_implement_are_refused() {
    let cases = [
        ("llama", json!({"attention_bias": true}), "attention_bias"),
        ("llama", json!({"mlp_bias": true}), "mlp_bias"),
        ("llama", json!({"hidden_act": "gelu"}), "hidden_act"),
        ("llama", json!({"head_dim": 32}), "head_dim"),
        (
            "llama",
            json!({"partial_rotary_factor": 0.5}),
            "partial_rotary_factor",
        ),
        ("stablelm", json!({"qk_layernorm": true}), "qk_layernorm"),
        (
            "stablelm",
            json!({"use_parallel_residual": true}),
            "use_parallel_residual",
        ),
        (
            "stablelm",
            json!({"tie_word_embeddings": true}),
            "tie_word_embeddings",
        ),
        (
            "phi",
            json!({"tie_word_embeddings": true}),
            "tie_word_embeddings",
        ),
        (
            "mistral",
            json!({"tie_word_embeddings": true}),
            "tie_word_embeddings",
        ),
        (
            "gemma",
            json!({"tie_word_embeddings": false}),
            "tie_word_embeddings",
        ),
        (
            "gemma",
            json!({"use_bidirectional_attention": true}),
            "use_bidirectional_attention",
        ),
        ("qwen2", json!({"hidden_act": "swiglu"}), "hidden_act"),
    ];
    for (id, edit, field) in cases {
        let message = parse_err(&with(id, edit.clone()));
        assert!(
            message.contains(&format!("field `{field}`")),
            "{id} {edit}: {message}"
        );
    }
}

#[test]
fn rope_types_other_than_default_are_refused_unless_implemented() {
    let yarn = json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32});
    let message = parse_err(&with("qwen2", json!({"rope_scaling": yarn})));
    assert!(
        message.contains("`yarn`") && message.contains("rope_scaling.rope_type"),
        "{message}"
    );

    let longrope = json!({"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]});
    let message = parse_err(&with("phi3", json!({"rope_scaling": longrope})));
    assert!(message.contains("`longrope`"), "{message}");

    let llama3 = json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64
    });
    let message = parse_err(&with("mistral", json!({"rope_scaling": llama3})));
    assert!(
        message.contains("`llama3`") && message.contains("supported: default"),
        "{message}"
    );

    // Llama implements llama3 scaling, in either config form.
    let v4 = parse(&with(
        "llama",
        json!({"rope_scaling": llama3, "rope_theta": 500000.0}),
    ))
    .unwrap();
    let mut parameters = llama3.clone();
    parameters["rope_theta"] = json!(500000.0);
    let v5 = parse(&with(
        "llama",
        json!({"rope_scaling": null, "rope_theta": null, "rope_parameters": parameters}),
    ))
    .unwrap();
    assert_eq!(v4.rope, v5.rope);
    assert_eq!(v4.rope.theta, 500000.0);
    assert!(matches!(v4.rope.scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));

    let missing = json!({"rope_type": "llama3", "factor": 8.0});
    let message = parse_err(&with("llama", json!({"rope_scaling": missing})));
    assert!(message.contains("low_freq_factor"), "{message}");
}

#[test]
fn both_rope_forms_at_once_must_agree() {
    let parameters = json!({"rope_type": "default", "rope_theta": 1000.0});
    let message = parse_err(&with("qwen2", json!({"rope_parameters": parameters})));
    assert!(
        message.contains("rope_theta") && message.contains("agree"),
        "{message}"
    );
    let parameters = json!({"rope_type": "default", "rope_theta": 10000.0});
    let message = parse_err(&with(
        "qwen2",
        json!({"rope_parameters": parameters, "rope_scaling": {"rope_type": "default"}}),
    ));
    assert!(message.contains("both rope_parameters"), "{message}");
}

#[test]
fn qwen_windows_count_only_when_enabled() {
    // Present but disabled, as in the released Qwen2.5 configs: no window.
    let off = parse(&with(
        "qwen2",
        json!({"sliding_window": 8, "use_sliding_window": false}),
    ))
    .unwrap();
    assert_eq!(off.window, Window::None);
    assert_eq!(off.context_length(), 128);
    // Enabled on a layer: the module cannot apply it, so the context ends at the window.
    let on = with(
        "qwen2",
        json!({"sliding_window": 16, "use_sliding_window": true, "max_window_layers": 1}),
    );
    let on = parse(&on).unwrap();
    assert_eq!(on.window, Window::LimitsContext { size: 16 });
    assert_eq!(on.context_length(), 16);
    // Enabled, but max_window_layers covers every layer: full attention everywhere.
    let all_full = with(
        "qwen3",
        json!({"sliding_window": 16, "use_sliding_window": true, "max_window_layers": 2}),
    );
    assert_eq!(parse(&all_full).unwrap().window, Window::None);
}

#[test]
fn sliding_windows_are_applied_or_limit_the_context() {
    let mistral = parse(&fixture_config("mistral-sw8")).unwrap();
    assert_eq!(
        mistral.window,
        Window::Applied {
            size: 8,
            layers: vec![true, true]
        }
    );
    let gemma2 = parse(&fixture_config("gemma2-sw8")).unwrap();
    assert_eq!(
        gemma2.window,
        Window::Applied {
            size: 8,
            layers: vec![true, false]
        }
    );
    let explicit = with(
        "gemma2-sw8",
        json!({"layer_types": ["full_attention", "sliding_attention"]}),
    );
    assert_eq!(
        parse(&explicit).unwrap().window,
        Window::Applied {
            size: 8,
            layers: vec![false, true]
        }
    );
    let phi3 = parse(&fixture_config("phi3")).unwrap();
    assert_eq!(phi3.window, Window::LimitsContext { size: 64 });
    assert_eq!(phi3.context_length(), 64);
    // transformers 5.x writes `sliding_window: null` for "no window".
    let none = parse(&with(
        "starcoder2-sw8",
        json!({"sliding_window": Value::Null}),
    ))
    .unwrap();
    assert_eq!(none.window, Window::None);
    let message = parse_err(&with("gemma2", json!({"layer_types": ["full_attention"]})));
    assert!(message.contains("layer_types"), "{message}");
}

#[test]
fn unknown_keys_are_reported_not_silently_dropped() {
    let config = with("llama", json!({"attn_temperature": 0.5}));
    let text = serde_json::to_string(&config).unwrap();
    let cfg = HfConfig::parse(Path::new("config.json"), &text).unwrap();
    arch::parse(&cfg).unwrap();
    assert_eq!(cfg.unread_keys(), vec!["attn_temperature".to_string()]);
}
