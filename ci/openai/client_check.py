"""The official `openai` client against `llm-worker-rbee serve`: chat and completions,
streamed and not, log-probabilities, stop strings, usage and errors, each answer's tokens
checked against the library's (`llm-worker-rbee generate --format json`).

Usage: client_check.py WORKER_BINARY MODEL_DIR
"""

import json
import os
import subprocess
import sys
import time
import urllib.request

import openai

WORKER, MODEL_DIR = sys.argv[1], sys.argv[2]
MAX_TOKENS = 12
PROMPT_IDS = [1, 17, 42, 99, 5]
MESSAGES = [{"role": "user", "content": "Say something."}]


def check(condition, what):
    if not condition:
        raise SystemExit(f"openai client check failed: {what}")
    print(f"ok: {what}")


def library(prompt_ids, max_tokens, logprobs=None):
    """The library's greedy generation of `prompt_ids`, through the CLI."""
    command = [
        WORKER, "generate", "--model", MODEL_DIR, "--max-tokens", str(max_tokens),
        "--prompt-ids", ",".join(map(str, prompt_ids)), "--format", "json", "--ignore-eos",
    ]
    if logprobs is not None:
        command += ["--logprobs", str(logprobs)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def start_server():
    server = subprocess.Popen(
        [WORKER, "serve", "--model", MODEL_DIR, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"},
    )
    line = server.stdout.readline().strip()
    if not line.startswith("listening on "):
        server.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    base = line.removeprefix("listening on ")
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{base}/health") as response:
                if response.status == 200:
                    return server, base
        except OSError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not load the model within 60 s")


def run(client, model):
    ids = [m.id for m in client.models.list().data]
    check(ids == [model], f"/v1/models lists the one model: {ids}")

    expected = library(PROMPT_IDS, MAX_TOKENS, logprobs=3)
    greedy = dict(model=model, prompt=PROMPT_IDS, max_tokens=MAX_TOKENS, temperature=0)
    extra = {"return_token_ids": True, "ignore_eos": True}

    whole = client.completions.create(**greedy, logprobs=3, extra_body=extra)
    choice = whole.choices[0]
    check(choice.token_ids == expected["token_ids"],
          f"completion tokens equal the library's: {choice.token_ids}")
    check(choice.text == expected["text"], "completion text equals the library's")
    check(choice.finish_reason == "length", f"finish_reason length: {choice.finish_reason}")
    check((whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens)
          == (len(PROMPT_IDS), MAX_TOKENS, len(PROMPT_IDS) + MAX_TOKENS),
          f"usage counts the prompt and the tokens: {whole.usage}")
    served = choice.logprobs.token_logprobs
    reported = [t["logprob"] for t in expected["logprobs"]]
    check(len(served) == MAX_TOKENS and all(abs(a - b) < 1e-6 for a, b in zip(served, reported)),
          "completion logprobs equal the library's")
    # The legacy shape is a map from token text to logprob: tokens of equal text share an entry.
    check(all(1 <= len(top) <= 3 and token in top for token, top in
              zip(choice.logprobs.tokens, choice.logprobs.top_logprobs)),
          "top_logprobs hold up to 3 tokens, the greedy one among them")

    chunks = list(client.completions.create(
        **greedy, stream=True, stream_options={"include_usage": True}, extra_body=extra))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    check(text == expected["text"], "streamed completion text equals the library's")
    check(finishes[-1] == "length" and not any(finishes[:-1]),
          "only the last streamed choice has a finish_reason")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == MAX_TOKENS,
          "the last chunk carries usage")

    # A stop string spanning two tokens' text, and a multi-byte one that never occurs.
    text = expected["text"]
    pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    middle = len(pieces) // 2
    stop = pieces[middle - 1][-2:] + pieces[middle][:2]
    stopped = client.completions.create(**greedy, stop=[stop], extra_body=extra).choices[0]
    check(stopped.text == text[: text.index(stop)] and stopped.finish_reason == "stop",
          f"stop {stop!r} ends the text before it: {stopped.text!r}")
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        **greedy, stop=[stop], stream=True, extra_body=extra) if c.choices)
    check(streamed == stopped.text, "a stream holds back the stop string and sends nothing after")
    never = client.completions.create(**greedy, stop="\u2603never\u2603", extra_body=extra)
    check(never.choices[0].text == text and never.choices[0].finish_reason == "length",
          "a multi-byte stop string that never occurs changes nothing")

    chat = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True,
        top_logprobs=2, extra_body={"return_token_ids": True, "ignore_eos": True})
    answer = chat.choices[0]
    prompt_ids = chat.model_extra["prompt_token_ids"]
    check(answer.token_ids == library(prompt_ids, 8)["token_ids"],
          "chat tokens equal the library's on the rendered prompt")
    check(answer.message.role == "assistant" and len(answer.logprobs.content) == 8,
          "a chat answer has the assistant's message and one logprob per token")
    check(all(len(t.top_logprobs) == 2 and t.bytes == list(t.token.encode())
              for t in answer.logprobs.content), "chat logprobs carry top_logprobs and bytes")
    stream = list(client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=8, temperature=0, stream=True,
        extra_body={"ignore_eos": True}))
    check(stream[0].choices[0].delta.role == "assistant", "the first chunk carries the role")
    content = "".join(c.choices[0].delta.content or "" for c in stream)
    check(content == answer.message.content, "streamed chat content equals the whole answer")
    check(stream[-1].choices[0].finish_reason == "length", "the last chunk has the finish reason")

    sampled = [client.completions.create(model=model, prompt="Once", max_tokens=8,
                                         temperature=0.8, seed=7).choices[0].text
               for _ in range(2)]
    check(sampled[0] == sampled[1], "the same seed samples the same text")

    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        check(False, "an unknown model is refused")
    except openai.NotFoundError as error:
        check(error.status_code == 404 and error.body["param"] == "model",
              f"an unknown model is a 404 naming `model`: {error.body['message']}")
    for bad, field in [({"n": 2}, "n"), ({"extra_body": {"bogus": 1}}, "bogus")]:
        try:
            client.completions.create(model=model, prompt="x", max_tokens=1, **bad)
            check(False, f"{field} is refused")
        except openai.BadRequestError as error:
            check(error.body["param"] == field, f"{field} is a 400 naming it")


def main():
    server, base = start_server()
    try:
        model = MODEL_DIR.rstrip("/").rsplit("/", 1)[-1]
        run(openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0), model)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
