//! The conformance harness: one libtest trial per case of `conformance/cases.toml`, named
//! `<model>/<backend>-<dtype>/<seed>/<prompt-id>`, so `cargo test -p conformance -- qwen2/`
//! filters and `cargo nextest run -p conformance` lists and runs them. Every trial writes its
//! record for `cargo xtask test` to aggregate.

use std::process::ExitCode;
use std::sync::Arc;

use conformance::report::Outcome;
use conformance::trial::{expand, Selection, Suite};
use conformance::{Cases, Paths};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let paths = Paths::from_env();
    let setup = Cases::load(&paths.cases)
        .map_err(|e| e.to_string())
        .and_then(|cases| Ok((cases, Selection::from_env()?)));
    let (cases, selection) = match setup {
        Ok(setup) => setup,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let specs = expand(&cases, &selection);
    let suite = Arc::new(Suite::new(cases, paths));
    let trials = specs
        .into_iter()
        .map(|spec| {
            let suite = suite.clone();
            Trial::ignorable_test(spec.name.clone(), move || {
                let record = suite.run(&spec);
                let message = record.message.unwrap_or_default();
                match record.outcome {
                    Outcome::Passed | Outcome::ExpectedFailure => Ok(Completion::Completed),
                    Outcome::Ignored => Ok(Completion::ignored_with(message)),
                    Outcome::Failed => Err(Failed::from(message)),
                }
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
