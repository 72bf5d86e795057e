"""Check an exported GGUF in llama-cpp-python against the merged Hugging Face model.

`verify_gguf` loads the file and fills a `GGUFResult`: greedy parity on the merge's check
prompts, the chat template and EOS/EOT in the GGUF metadata (every EOS id of the HF generation
config must be an end-of-generation token for llama.cpp), the tokenizer, and whether a chat reply
stops at EOS instead of running on. Parity allows one thing: a reply may part from the merged
model's where that model itself was at a near-tie, i.e. the GGUF's token was among the top
logits the merge kept (`merge.TOP_LOGITS`) and within `NEAR_TIE` of the chosen one. Writing
float32 weights as f16 moves logits by a few thousandths; a flip there is rounding, not a broken
export, and `compare_to_merged` reports it as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .chat import CHAT_SAMPLING
from .export_report import GGUFResult

NEAR_TIE = 0.1  # logits: a greedy flip within this of the merged model's choice is rounding


def verify_gguf(path: Path, merge_info: dict[str, Any], merged_dir: Path, result: GGUFResult,
                chat_max_tokens: int = CHAT_SAMPLING.max_new_tokens) -> GGUFResult:
    """Load `path` in llama-cpp-python and fill `result` with parity, template, EOS and stop checks;
    the stop check gives a chat reply the Chat tab's token budget to reach EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    cases = merge_info.get("prompts", [])
    llm = _load_llama(path, cases, chat_max_tokens)
    try:
        _check_metadata(llm, tokenizer, cases, result)
        _check_eos(llm, tokenizer, merge_info.get("eos_ids") or [tokenizer.eos_token_id], result)
        eos_ids = stop_ids(llm, merge_info)
        _check_parity(llm, cases, eos_ids, int(merge_info.get("max_new_tokens", 32)), result)
        _check_chat_stop(llm, cases, eos_ids, chat_max_tokens, result)
    finally:
        llm.close()
    result.verified = True
    if result.fallback_tensors:
        result.notes.append(f"{Path(path).name}: {result.fallback_tensors} tensors fell back to another type "
                            f"(row width not a multiple of the K-quant block of 256)")
    return result


def stop_ids(llm: Any, merge_info: dict[str, Any]) -> set[int]:
    """Where a GGUF check stops greedy decoding: the merge report's EOS set (`inference.eos_token_ids`,
    the set chat, evaluation and training stop on) plus the GGUF's own EOS."""
    return {int(i) for i in merge_info.get("eos_ids", [])} | {llm.token_eos()}


def _load_llama(path: Path, cases: list[dict[str, Any]], chat_max_tokens: int) -> Any:
    from llama_cpp import Llama

    longest = max((len(c["prompt_ids"]) + len(c.get("merged_ids", [])) for c in cases), default=0)
    n_ctx = max(512, longest + chat_max_tokens + 64)
    from .llama_tools import gpu_layers

    return Llama(model_path=str(path), n_ctx=n_ctx, seed=0, verbose=False, n_gpu_layers=gpu_layers())


def _check_metadata(llm: Any, tokenizer: Any, cases: list[dict[str, Any]], result: GGUFResult) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template") or ""
    eos_text = _token_text(llm, llm.token_eos())
    same_template = template.strip() == (tokenizer.chat_template or "").strip()
    formatter = Jinja2ChatFormatter(template, eos_text, tokenizer.bos_token or "") if template else None
    renders = bool(formatter) and all(formatter(messages=c["messages"]).prompt == c["prompt_text"] for c in cases)
    result.chat_template_ok = same_template and renders
    result.tokenizer_match = all(
        llm.tokenize(c["prompt_text"].encode(), add_bos=False, special=True) == c["prompt_ids"] for c in cases
    )


def _check_eos(llm: Any, tokenizer: Any, hf_eos_ids: list[int], result: GGUFResult) -> None:
    """The GGUF's EOS (or EOT, `tokenizer.ggml.eot_token_id`) is the HF tokenizer's EOS, and every
    token the HF model stops on (the generation config may list several) ends generation in llama.cpp."""
    eot = llm.metadata.get("tokenizer.ggml.eot_token_id")
    ends = [llm.token_eos()] + ([int(eot)] if eot is not None and int(eot) != llm.token_eos() else [])
    texts = [_token_text(llm, t) for t in ends]
    result.eos_token = " / ".join(texts)
    not_eog = [i for i in hf_eos_ids if not _is_end_of_generation(llm, int(i), ends)]
    result.eos_ok = tokenizer.eos_token in texts and not not_eog
    if tokenizer.eos_token not in texts:
        result.notes.append(f"GGUF EOS/EOT is {result.eos_token!r}, the HF tokenizer's EOS {tokenizer.eos_token!r}")
    if not_eog:
        names = [tokenizer.convert_ids_to_tokens(int(i)) for i in not_eog]
        result.notes.append(f"llama.cpp does not end generation at {names}, where the HF model stops: replies "
                            f"would run on in llama.cpp and Ollama")


def _is_end_of_generation(llm: Any, token: int, ends: list[int]) -> bool:
    """llama.cpp's own end-of-generation set (EOS, EOT, EOM and tokens such as <|im_end|>)."""
    import llama_cpp

    vocab = getattr(getattr(llm, "_model", None), "vocab", None)  # llama-cpp-python keeps the vocab there
    if vocab is None or not hasattr(llama_cpp, "llama_vocab_is_eog"):
        return token in ends
    return bool(llama_cpp.llama_vocab_is_eog(vocab, token))


def _token_text(llm: Any, token: int) -> str:
    return llm.detokenize([token], special=True).decode("utf-8", "replace")


def llama_greedy(llm: Any, prompt_ids: list[int], max_new_tokens: int, eos_ids: set[int]) -> list[int]:
    out: list[int] = []
    # Start from an empty KV cache: llama-cpp-python's prefix reuse between prompts that share a
    # beginning (same system prompt) gave different tokens than a fresh evaluation.
    llm.reset()
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        out.append(token)
        if token in eos_ids or len(out) >= max_new_tokens:
            break
    return out


def _check_parity(llm: Any, cases: list[dict[str, Any]], eos_ids: set[int], max_new_tokens: int,
                  result: GGUFResult) -> None:
    shares = []
    for case in cases:
        ref = case["merged_ids"]
        got = llama_greedy(llm, case["prompt_ids"], max_new_tokens, eos_ids)
        verdict, gap = compare_to_merged(got, case)
        result.identical += verdict == "identical"
        result.near_ties += verdict == "near-tie"
        if verdict == "near-tie":
            result.notes.append(f"{result.quant}: one reply parts from the merged model's at token "
                                f"{_prefix_len(got, ref) + 1}, where that model rated both tokens within {gap:.4f}")
        shares.append(_prefix_len(got, ref) / max(len(ref), 1))
    result.prompts = len(cases)
    result.prefix_agreement = round(sum(shares) / max(len(shares), 1), 3)


def compare_to_merged(got: list[int], case: dict[str, Any]) -> tuple[str, float | None]:
    """'identical', 'near-tie' (with the logit gap) or 'differs' against the merged model's reply.

    A near-tie: at the first differing token, the GGUF's choice was among the merged model's
    top logits (`merged_top`, written by the merge) and within NEAR_TIE of its greedy choice.
    """
    ref = case["merged_ids"]
    if got == ref:
        return "identical", None
    i = _prefix_len(got, ref)
    top = case.get("merged_top") or []
    if i >= min(len(got), len(ref), len(top)):
        return "differs", None  # one reply is a prefix of the other, or no logits were kept
    logits = {int(token): logit for token, logit in top[i]}
    if got[i] not in logits:
        return "differs", None
    gap = logits[ref[i]] - logits[got[i]]
    return ("near-tie" if gap <= NEAR_TIE else "differs"), gap


def _prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _check_chat_stop(llm: Any, cases: list[dict[str, Any]], eos_ids: set[int], max_tokens: int,
                     result: GGUFResult) -> None:
    """A chat completion through the GGUF's own template must stop at EOS, not at max_tokens.

    Uses a check prompt whose merged-model reply ended at EOS when there is one, so a model that
    simply talks long is not mistaken for one that never stops.
    """
    if not cases:
        return
    case = next((c for c in cases if c["merged_ids"] and c["merged_ids"][-1] in eos_ids), cases[0])
    llm.reset()
    reply = llm.create_chat_completion(messages=case["messages"], max_tokens=max_tokens, temperature=0.0, seed=0)
    choice = reply["choices"][0]
    result.chat_stops = choice.get("finish_reason") == "stop"
    result.chat_reply = (choice["message"].get("content") or "")[:500]
    if not result.chat_stops:
        result.notes.append(f"{Path(result.path).name}: chat reply ran to {max_tokens} tokens without EOS")
