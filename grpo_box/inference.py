"""Text generation for chat and evaluation: a base model, optionally with a LoRA adapter, or a GGUF.

Chat, side-by-side comparison and before/after evaluation all need the same thing: chat messages
in, assistant replies out, decoded exactly as the trainer saw them (the chat template with the
assistant header, left padding, stop at the tokenizer's EOS). One `Generator` interface serves
three back ends, chosen by `load_for_generation`:

- CPU: plain transformers + PEFT. Unsloth's `FastLanguageModel` queries CUDA and cannot load here.
- GPU: Unsloth. With `fast_inference=True` the base sits in Unsloth's colocated vLLM engine and
  the adapter is passed per request (`model.fast_generate(..., lora_request=model.load_lora(dir))`),
  which is what batched evaluation wants; without it, Unsloth's patched HF model is used, which
  can stream token by token for chat.
- GGUF: llama-cpp-python's `create_chat_completion`, so chat works on an exported model too.

`import unsloth` must come before transformers / peft / trl, so this module imports all of them
lazily, inside the functions that need them. An engine that already holds a model (the trainer)
wraps it with `Generator(model, tokenizer)` instead of loading a second copy.

One decoder everywhere: greedy (or plain temperature / nucleus sampling) with no repetition
penalty, top-k, min-p or n-gram blocking, on every back end. HF `generate` would otherwise take
such settings from the model's generation_config (Qwen Instruct models ship a repetition penalty
and top-k), while vLLM, TRL's rollouts and llama.cpp do not, and base/trained accuracy and the
merge / GGUF parity checks would depend on the back end; so each back end is passed the neutral
values explicitly (`NEUTRAL_HF`, the SamplingParams and llama.cpp requests below).

What varies is one value, `Sampling`: the reply length, temperature (0 = greedy), top-p, replies per
conversation and seed. Every back end's `complete` and `stream` take it, and each turns it into its
own request (HF `generate` kwargs, vLLM SamplingParams, a llama.cpp request), so a setting means the
same thing everywhere. `BaseGenerator.generate` is the keyword shortcut that builds one. Chat's
defaults are Sampling values too (`chat.CHAT_SAMPLING`, `chat.COMPARE_SAMPLING`).

A generator that loaded its model owns it: `close()` frees its GPU memory, tearing a vLLM engine
down with unsloth_zoo's `delete_vllm` (dropping the reference alone frees nothing, and the app's
Chat tab would start a second engine beside the first). One that wraps the trainer's model leaves
it alone. llama.cpp models are loaded with `llama_tools.gpu_layers()` layers on the GPU.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .chat_format import apply_run_format, prefill_of, prompt_text
from .config import ModelConfig
from .modeling import check_gpu_usable, has_cuda, load_cpu_model, tolerate_inductor_pool_aliasing, unsloth_load_kwargs
from .models import ModelError, resolve_model
from .runs import ADAPTER_CONFIG, RunDir, is_adapter_dir, read_adapter_config

Messages = list[dict[str, str]]

# HF generate settings that would otherwise come from the model's generation_config (transformers 5:
# GenerationMixin._prepare_generation_config fills every unset field from it), all set to "off"
NEUTRAL_HF: dict[str, Any] = {
    "num_beams": 1,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_new_tokens": None,
    "min_p": None,
    "typical_p": None,
    "epsilon_cutoff": None,
    "eta_cutoff": None,
    "top_h": None,
}


@dataclass(frozen=True)
class Sampling:
    """How replies are decoded, on every back end: up to `max_new_tokens` new tokens; greedy when
    `temperature` <= 0, else plain temperature / nucleus (`top_p`) sampling; `n` replies per
    conversation (greedy: the one greedy reply, repeated); `seed` makes samples reproducible
    (None: unseeded). `stream` yields one reply and ignores `n`. Frozen: a variant is
    `dataclasses.replace(sampling, ...)`."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Completion:
    """One generated reply: its text (without EOS), its length in tokens (EOS included, as TRL
    counts it), whether it ran into `max_new_tokens` before EOS, and its token ids (what TRL hands
    reward functions as `completion_ids`; None where the back end does not expose them)."""

    text: str
    num_tokens: int
    truncated: bool
    token_ids: list[int] | None = None


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def run_adapter_dir(run: RunDir) -> Path | None:
    """The adapter a run offers: the newest by training step of `adapter/` and its checkpoints (one
    past the step adapter/ was saved at wins: a `resume --steps N` cut short), else None. An adapter/
    without a recorded step (an older or imported run) counts as the newest."""
    checkpoints = [c for c in run.checkpoints() if is_adapter_dir(c)]
    newest = checkpoints[-1] if checkpoints else None
    if not run.has_adapter():
        return newest
    saved_at = run.adapter_step()
    if newest is not None and saved_at is not None and int(newest.name.rsplit("-", 1)[-1]) > saved_at:
        return newest
    return run.adapter_dir


def adapter_dir_step(run: RunDir, adapter: Path) -> int | None:
    """The training step of `adapter` (the run's adapter/ or one of its checkpoint-N folders)."""
    if adapter == run.adapter_dir:
        return run.adapter_step()
    try:
        return int(adapter.name.rsplit("-", 1)[-1])
    except ValueError:
        return None


def load_for_generation(
    model_name_or_dir: str | Path,
    adapter_dir: str | Path | None = None,
    *,
    model_config: ModelConfig | None = None,
    fast_inference: bool = False,
) -> "BaseGenerator":
    """A generator for a model name (`bundled:…`, Hub id, HF dir) or a `.gguf` file, plus an adapter.

    On a GPU, `model_config` supplies Unsloth's load settings (4-bit, sequence length, vLLM share)
    and `fast_inference=True` selects vLLM (batched, no token streaming). On CPU both are ignored.
    """
    if is_gguf(model_name_or_dir):
        if adapter_dir is not None:
            raise ModelError(f"{model_name_or_dir}: a GGUF model cannot take a LoRA adapter; merge it before export")
        return from_gguf(model_name_or_dir)
    path = resolve_model(str(model_name_or_dir))
    adapter = str(adapter_dir) if adapter_dir is not None else None
    if adapter is not None and not is_adapter_dir(adapter):
        raise ModelError(f"{adapter} is not a LoRA adapter folder (no {ADAPTER_CONFIG}): give a run's adapter/ "
                         "or checkpoint-N folder")
    if has_cuda():
        check_gpu_usable(None)  # a card the stack cannot use: the reason, not a kernel error mid-reply
        return _load_unsloth(path, adapter, model_config or standalone_model_config(), fast_inference)
    return _load_cpu(path, adapter)


def standalone_model_config() -> ModelConfig:
    """Unsloth's load settings for a model that comes without a run config (a merged model, a Hub
    id): 16-bit, a 512-token context (a prompt plus a chat reply of `Sampling`'s default length) and
    0.6 of the card for vLLM. Not the dataclass defaults: those are the cpu run's, whose 256 tokens
    fit only its short training replies."""
    return ModelConfig(max_seq_length=512, gpu_memory_utilization=0.6)


def from_gguf(path: str | Path, n_ctx: int = 4096, seed: int = 0, n_gpu_layers: int | None = None) -> "GGUFGenerator":
    """A generator on a GGUF file through llama-cpp-python (chat template from the GGUF metadata);
    `n_gpu_layers` None: `llama_tools.gpu_layers()` (all where the build offloads), 0: the CPU only."""
    import llama_cpp

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"{path}: GGUF file not found; export one first or check the path")
    from .llama_tools import gpu_layers

    layers = gpu_layers() if n_gpu_layers is None else n_gpu_layers
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, seed=seed, n_gpu_layers=layers, verbose=False)
    return GGUFGenerator(llm, path)


# -- the generator interface ----------------------------------------------------------------------


class BaseGenerator:
    """What chat and evaluation use; subclasses implement `complete` and `stream`.

    `prefill` is the reply prefill the model's chat template carries (`chat_format.with_prefill`):
    the model never generates it, so every reply text, streamed or whole, starts with it.
    """

    prefill: str = ""

    def generate(
        self,
        messages_batch: list[Messages],
        max_new_tokens: int = Sampling.max_new_tokens,
        temperature: float = Sampling.temperature,
        top_p: float = Sampling.top_p,
        num_return_sequences: int = Sampling.n,
        seed: int | None = Sampling.seed,
    ) -> list[list[str]]:
        """`complete` with the `Sampling` given as keywords, texts only: for each conversation,
        `num_return_sequences` reply texts; greedy when temperature <= 0."""
        done = self.complete(messages_batch, Sampling(max_new_tokens, temperature, top_p, num_return_sequences, seed))
        return [[c.text for c in replies] for replies in done]

    def complete(self, messages_batch: list[Messages], sampling: Sampling = Sampling()) -> list[list[Completion]]:
        """For each conversation, `sampling.n` replies."""
        raise NotImplementedError

    def stream(self, messages: Messages, sampling: Sampling = Sampling()) -> Iterator[str]:
        """Pieces of one reply as they are generated; their concatenation is the reply."""
        raise NotImplementedError

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """Generate with the base model inside this block (no-op when there is no adapter)."""
        yield

    def use_run_format(self, data_cfg: Any) -> None:
        """Prompt as a run does: its one-shot turn and reply prefill (`chat_format`); a base model's
        tokenizer does not carry them. A GGUF's chat template is fixed in the file: it keeps what
        it was exported with."""
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None and tokenizer.chat_template:
            apply_run_format(tokenizer, data_cfg)
            self.prefill = prefill_of(tokenizer.chat_template)

    @property
    def has_adapter(self) -> bool:
        return False

    def close(self) -> None:
        """Drop the model (frees memory once nothing else refers to it)."""


class Generator(BaseGenerator):
    """A transformers model (optionally a PeftModel) and its tokenizer; HF `generate`."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, owns_model: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.owns_model = owns_model  # loaded for this generator (not the trainer's): close() frees it
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.prefill = prefill_of(tokenizer.chat_template)

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter") and bool(getattr(self.model, "peft_config", None))

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        if not self.has_adapter:
            yield
            return
        with self.model.disable_adapter():
            yield

    def prompt_text(self, messages: Messages) -> str:
        return prompt_text(self.tokenizer, messages)

    def complete(self, messages_batch: list[Messages], sampling: Sampling = Sampling()) -> list[list[Completion]]:
        _seed_torch(sampling)
        results: list[list[Completion]] = []
        for start in range(0, len(messages_batch), self.batch_size):
            results += self._complete_chunk(messages_batch[start : start + self.batch_size], sampling)
        return results

    def _complete_chunk(self, chunk: list[Messages], sampling: Sampling) -> list[list[Completion]]:
        import torch

        inputs = self._encode(chunk)
        kwargs = self._generation_kwargs(sampling)
        n = sampling.n
        if not sampling.greedy:
            kwargs["num_return_sequences"] = n
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        done = [self._completion(ids, sampling.max_new_tokens) for ids in new]
        if sampling.greedy:  # greedy replies are identical: generate once, repeat
            return [[done[i]] * n for i in range(len(chunk))]
        return [done[i * n : (i + 1) * n] for i in range(len(chunk))]

    def _encode(self, chunk: list[Messages]) -> dict[str, Any]:
        texts = [self.prompt_text(m) for m in chunk]
        # The chat template already holds any BOS token; don't let the tokenizer add another.
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = getattr(self.model, "device", None)
        return {k: v.to(device) for k, v in enc.items()} if device is not None else dict(enc)

    def _generation_kwargs(self, sampling: Sampling) -> dict[str, Any]:
        """HF `generate` kwargs for one sequence per prompt (`_complete_chunk` adds the count)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "eos_token_id": self.eos_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
            **NEUTRAL_HF,
        }
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:  # plain temperature / nucleus sampling, as vLLM and TRL's rollouts do (no top-k)
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        return kwargs

    def _completion(self, ids: list[int], max_new_tokens: int) -> Completion:
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        kept = ids if end is None else ids[:end]
        text = self.prefill + self.tokenizer.decode(kept, skip_special_tokens=True)
        ids = ids if end is None else ids[: end + 1]
        return Completion(text, len(ids), end is None and len(ids) >= max_new_tokens, ids)

    def stream(self, messages: Messages, sampling: Sampling = Sampling()) -> Iterator[str]:
        """Token-by-token text via TextIteratorStreamer; generation runs in a worker thread.

        Leaving the loop early (a closed generator, a UI stop button) stops generation too.
        """
        from transformers import TextIteratorStreamer

        _seed_torch(sampling)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        kwargs = {**self._encode([messages]), **self._generation_kwargs(sampling)}
        kwargs.update(streamer=streamer, stopping_criteria=_stopping_criteria(stop))
        errors: list[BaseException] = []
        worker = threading.Thread(target=self._generate_into, args=(kwargs, streamer, errors), daemon=True)
        worker.start()
        try:
            if self.prefill:
                yield self.prefill
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.set()
            worker.join()
        if errors:
            raise errors[0]

    def _generate_into(self, kwargs: dict[str, Any], streamer: Any, errors: list[BaseException]) -> None:
        import torch

        try:
            with torch.inference_mode():
                self.model.generate(**kwargs)
        except BaseException as exc:  # surfaced in the consuming thread
            errors.append(exc)
            streamer.end()

    def close(self) -> None:
        owned, self.model = self.owns_model, None
        if owned:
            _free_cuda_cache()


class GGUFGenerator(BaseGenerator):
    """A llama-cpp-python model; the GGUF's own chat template and EOS decide prompt and stop."""

    def __init__(self, llm: Any, path: Path):
        self.llm = llm
        self.path = path
        self.prefill = prefill_of((getattr(llm, "metadata", None) or {}).get("tokenizer.chat_template"))

    def _request(self, messages: Messages, sampling: Sampling) -> dict[str, Any]:
        """A llama.cpp chat request for one reply (seeded beforehand: `_seed`)."""
        return {
            "messages": messages,
            "max_tokens": sampling.max_new_tokens,
            "temperature": 0.0 if sampling.greedy else sampling.temperature,
            "top_p": 1.0 if sampling.greedy else sampling.top_p,
            "top_k": 0,  # off, like min_p: plain temperature / nucleus sampling as elsewhere
            "min_p": 0.0,
            "repeat_penalty": 1.0,
        }

    def _seed(self, sampling: Sampling) -> None:
        if sampling.seed is not None:
            self.llm.set_seed(sampling.seed)

    def complete(self, messages_batch: list[Messages], sampling: Sampling = Sampling()) -> list[list[Completion]]:
        self._seed(sampling)
        return [[self._one(m, sampling) for _ in range(sampling.n)] for m in messages_batch]

    def _one(self, messages: Messages, sampling: Sampling) -> Completion:
        self.llm.reset()  # no KV prefix reuse across requests: see gguf_check.llama_greedy
        out = self.llm.create_chat_completion(**self._request(messages, sampling))
        choice = out["choices"][0]
        tokens = out.get("usage", {}).get("completion_tokens", 0)
        text = self.prefill + (choice["message"].get("content") or "")
        return Completion(text, tokens, choice.get("finish_reason") == "length")

    def stream(self, messages: Messages, sampling: Sampling = Sampling()) -> Iterator[str]:
        request = self._request(messages, sampling)
        self._seed(sampling)
        self.llm.reset()
        if self.prefill:
            yield self.prefill
        for chunk in self.llm.create_chat_completion(**request, stream=True):
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                yield piece

    def close(self) -> None:
        if self.llm is not None and hasattr(self.llm, "close"):
            self.llm.close()
        self.llm = None


class VLLMGenerator(BaseGenerator):
    """Unsloth's colocated vLLM (`fast_inference=True`); the adapter goes with each request."""

    def __init__(self, model: Any, tokenizer: Any, adapter_dir: str | None = None, owns_engine: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.owns_engine = owns_engine  # loaded for this generator (not the trainer's): close() tears it down
        self._lora = _lora_request(model, adapter_dir) if adapter_dir else None
        self._use_lora = True
        self.prefill = prefill_of(tokenizer.chat_template)

    @property
    def has_adapter(self) -> bool:
        return self._lora is not None

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        self._use_lora = False
        try:
            yield
        finally:
            self._use_lora = True

    def complete(self, messages_batch: list[Messages], sampling: Sampling = Sampling()) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(**vllm_sampling_kwargs(sampling))
        # Token ids, not text: vLLM would add the BOS again to a chat template that already has it.
        prompts = [{"prompt_token_ids": self._prompt_ids(m)} for m in messages_batch]
        lora = self._lora if self._use_lora else None
        outputs = self.model.fast_generate(prompts, sampling_params=params, lora_request=lora, use_tqdm=False)
        done = [[_vllm_completion(o, self.prefill) for o in request.outputs] for request in outputs]
        return [replies * sampling.n if sampling.greedy else replies for replies in done]

    def _prompt_ids(self, messages: Messages) -> list[int]:
        return self.tokenizer(prompt_text(self.tokenizer, messages), add_special_tokens=False)["input_ids"]

    def stream(self, messages: Messages, sampling: Sampling = Sampling()) -> Iterator[str]:
        """vLLM's offline engine returns whole replies: the stream is one piece."""
        yield self.complete([messages], replace(sampling, n=1))[0][0].text

    def close(self) -> None:
        model, self.model = self.model, None
        if model is None or not self.owns_engine:
            return
        engine = getattr(model, "vllm_engine", None)
        if engine is not None:
            _delete_vllm_engine(engine)
            try:
                model.vllm_engine = None
            except Exception:  # a model object that refuses the attribute: the engine is gone anyway
                pass
        del model, engine
        _free_cuda_cache()


def vllm_sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    """vLLM SamplingParams for greedy (temperature 0) or plain temperature / nucleus sampling, with
    every penalty and filter off explicitly (vLLM merges only the EOS ids from generation_config)."""
    greedy = sampling.greedy
    return {
        "n": 1 if greedy else sampling.n,
        "temperature": 0.0 if greedy else sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "top_k": -1,  # all tokens (vLLM: 0 or -1)
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_tokens": sampling.max_new_tokens,
        "seed": sampling.seed,
    }


def _seed_torch(sampling: Sampling) -> None:
    """Seed torch's generator for HF sampling, when `sampling` has a seed."""
    if sampling.seed is not None:
        import torch

        torch.manual_seed(sampling.seed)


def _delete_vllm_engine(engine: Any) -> None:
    """unsloth_zoo's teardown of a vLLM engine (model parallel groups, executor, cache)."""
    from unsloth_zoo.vllm_utils import delete_vllm

    delete_vllm(engine)


def _free_cuda_cache() -> None:
    """Return freed blocks to the driver, so the next model (or another process) can use them."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and has_cuda() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# -- loading --------------------------------------------------------------------------------------


def _load_cpu(path: str, adapter: str | None) -> Generator:
    """transformers + PEFT on the CPU (`modeling.load_cpu_model`), the adapter's tokenizer if it saved one."""
    model, tokenizer = load_cpu_model(path, adapter if _has_tokenizer(adapter) else None)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return Generator(model, tokenizer, owns_model=True)


def _load_unsloth(path: str, adapter: str | None, cfg: ModelConfig, fast_inference: bool) -> BaseGenerator:
    """Unsloth on a GPU: vLLM with a per-request LoRA, or its HF model with the adapter attached."""
    tolerate_inductor_pool_aliasing()
    import unsloth  # noqa: F401  (must precede transformers / peft)
    from unsloth import FastLanguageModel

    kwargs = unsloth_load_kwargs(cfg, path, fast_inference=fast_inference, adapter_rank=_adapter_rank(adapter))
    model, tokenizer = FastLanguageModel.from_pretrained(**kwargs)
    if has_vllm_engine(model):  # Unsloth turns fast_inference off where vLLM cannot run (old GPUs)
        return VLLMGenerator(model, tokenizer, adapter, owns_engine=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    FastLanguageModel.for_inference(model)
    return Generator(model, tokenizer, owns_model=True)


def _adapter_rank(adapter: str | None) -> int:
    if adapter is None:
        return 0
    return int(read_adapter_config(adapter).get("r", 0))


def _has_tokenizer(adapter: str | None) -> bool:
    return adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file()


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The token ids that end a reply: the tokenizer's EOS plus every EOS in the model's generation
    config (e.g. Qwen's `<|im_end|>` and `<|endoftext|>`), tokenizer's first, without repeats.

    This is the set GRPOTrainer stops completions on in training (TRL 1.15 `eos_token_ids`), so
    chat, evaluation, the merge check and the GGUF checks (through the merge report's `eos_ids`)
    all stop where the trained policy learned to stop.
    """
    ids = [tokenizer.eos_token_id]
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += list(extra) if isinstance(extra, (list, tuple)) else [extra]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def _stopping_criteria(stop: threading.Event) -> Any:
    """A StoppingCriteriaList that ends generation once `stop` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])


def has_vllm_engine(model: Any) -> bool:
    """Whether Unsloth attached a vLLM engine (it may decline `fast_inference` on some GPUs)."""
    return getattr(model, "vllm_engine", None) is not None


def _lora_request(model: Any, adapter_dir: str) -> Any:
    """A vLLM LoRA request through Unsloth's `load_lora`: it checks the rank against the engine's
    and numbers requests from its own counter (a hand-made LoRARequest id could collide)."""
    if hasattr(model, "load_lora"):
        return model.load_lora(adapter_dir)
    from unsloth_zoo.vllm_utils import load_lora

    return load_lora(model, adapter_dir)


def _vllm_completion(output: Any, prefill: str = "") -> Completion:
    ids = list(output.token_ids)
    return Completion(prefill + output.text, len(ids), output.finish_reason == "length", ids)
