//! Requests and their results ([`llm_worker_rbee_api`]'s types), and the prepared form
//! generation takes.

pub use llm_worker_rbee_api::request::*;

/// A request checked against the model and tokenized, by `Prompter::prepare`: what generation
/// takes.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedRequest {
    request: Request,
    prompt_ids: Vec<u32>,
}

impl PreparedRequest {
    pub(crate) fn new(request: Request, prompt_ids: Vec<u32>) -> Self {
        Self {
            request,
            prompt_ids,
        }
    }

    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The prompt as the model sees it: tokenized, or rendered with the chat template.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }
}
