"""The Chat tab: where a chat runs while a training job holds the GPU (a table), and, through the
API against the real app and the bundled model with a random LoRA: a streamed reply whose
reasoning comes as a collapsible message, the held-out prompt picker, compare mode, two sessions
chatting at once without mixing their replies, and `chat_cache.release()` stopping a reply in
progress and dropping the model (what the Train tab calls before a job starts). Without the app:
where a reply queued behind another page's runs is decided once it holds the model, and a data
source that fails to load is a message in the held-out picker."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest
from helpers import make_random_lora
from ui_helpers import LiveApp, launch_app, value

from grpo_box.chat import ChatSource
from grpo_box.config import RunConfig
from grpo_box.runs import create_run
from grpo_box.ui import chat_cache

pytestmark = pytest.mark.usefixtures("one_torch_thread")
THINKS = "Reply with exactly this text: <think>2 plus 2 is 4</think><answer>4</answer>"


@pytest.mark.parametrize(("model", "gpu", "training", "when", "device", "wait", "said"), [
    ("m", False, None, "wait", "cpu", False, "on the CPU (no GPU here)"),
    ("m", False, "r1", "wait", "cpu", False, "shares the CPU"),
    ("m", True, None, "wait", "gpu", False, "on the GPU"),
    ("m", True, "r1", "wait", "gpu", True, "waits for it to finish"),
    ("m", True, "r1", "cpu", "cpu", False, "runs on the CPU instead"),
    ("x.gguf", True, "r1", "wait", "cpu", False, "llama.cpp on the CPU"),
])
def test_placement_says_where_the_chat_runs(model: str, gpu: bool, training: str | None, when: str, device: str,
                                            wait: bool, said: str) -> None:
    where = chat_cache.placement(ChatSource(model, None, None, None), gpu, training, when)
    assert (where.device, where.wait) == (device, wait) and said in where.note
    if training and not model.endswith(".gguf"):
        assert training in where.note


def test_a_gguf_goes_to_the_gpu_only_where_llama_cpp_offloads_and_nothing_trains(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = ChatSource("x.gguf", None, None, None)
    monkeypatch.setenv("GRPO_BOX_GPU_LAYERS", "0")  # a llama.cpp built for the CPU (as here)
    assert chat_cache.placement(gguf, True, None, "wait").device == "cpu"
    monkeypatch.setenv("GRPO_BOX_GPU_LAYERS", "-1")  # a CUDA build
    assert chat_cache.placement(gguf, True, None, "wait") == chat_cache.Placement(
        "gpu", "GGUF in llama.cpp on the GPU: the replies Ollama and llama.cpp will give.")
    busy = chat_cache.placement(gguf, True, "r1", "wait")  # never waits: llama.cpp is quick on the CPU
    assert (busy.device, busy.wait) == ("cpu", False) and "training (r1) holds the GPU" in busy.note
    assert chat_cache.placement(gguf, False, None, "wait").device == "cpu"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> Any:
    tmp = tmp_path_factory.mktemp("ui-chat")
    config = RunConfig()
    config.output.runs_dir, config.output.run_name = str(tmp / "runs"), "chatty"
    config.data.size, config.data.eval_size = 12, 4
    config.data.one_shot = config.data.prefill = False  # the model's own chat template, which the adapter below suits
    run = create_run(config)
    # this adapter (seeded, so the same every run) answers THINKS greedily with a <think> block
    make_random_lora(bundled_model_dir, run.adapter_dir, r=8, alpha=16, targets=config.lora.target_modules)
    shown = RunConfig()  # the cpu preset's prompt: a one-shot turn and a <think> prefill
    shown.output.runs_dir, shown.output.run_name = str(tmp / "runs"), "shown"
    shown.data.size, shown.data.eval_size = 12, 4
    make_random_lora(bundled_model_dir, create_run(shown).adapter_dir, r=8, alpha=16, targets=shown.lora.target_modules,
                     std=0.0)  # a LoRA that changes nothing: the base model, prompted as the run trains
    yield from launch_app(tmp)
    chat_cache.release()


def send(page: Any, prompt: str, model: str = "trained", tokens: int = 32, system: str | None = None) -> dict[str, Any]:
    return page.call("/chat_send", "chatty", model, system, 0.0, 1.0, tokens, "wait", prompt, [], [])


def words(message: dict[str, Any]) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


@pytest.mark.slow
def test_reply_streams_with_a_collapsible_reasoning_message(app: LiveApp) -> None:
    page = app.client()
    system = page.call("/chat_open", "chatty")["chat.system"]
    job = page.client.submit("chatty", "trained", system, 0.0, 1.0, 64, "wait", THINKS, [], [], api_name="/chat_send")
    seen = []
    for update in job:
        bot = update[0]
        if bot and bot[-1]["role"] == "assistant":
            seen.append(sum(len(words(m)) for m in bot[1:]))
    bot, note = job.outputs()[-1][0], job.outputs()[-1][-1]
    assert "The reply finished in" in note and "Running on the CPU" in note  # only the last update says so
    assert all("finished" not in str(update[-1]) for update in job.outputs()[:-1])
    assert len(set(seen)) >= 3 and seen[0] < seen[-1], seen  # it grew, token by token
    thought = [m for m in bot if m["role"] == "assistant" and (m.get("metadata") or {}).get("title")]
    assert len(thought) == 1 and thought[0]["metadata"]["title"] == "Reasoning"
    assert words(thought[0]) == "2 plus 2 is 4" and thought[0]["metadata"]["status"] == "done"
    assert words(bot[-1]) == "4" and not bot[-1].get("metadata")


@pytest.mark.slow
def test_a_run_with_the_one_shot_turn_and_prefill_replies_in_its_format(app: LiveApp) -> None:
    """The chat prompts as the run trains (one-shot turn, <think> prefill, from the chat template),
    so even the untrained model answers in the format, its reasoning shown as a collapsible message."""
    page = app.client()
    system = page.call("/chat_open", "shown")["chat.system"]
    bot = page.call("/chat_send", "shown", "trained", system, 0.0, 1.0, 32, "wait", "What is 6 + 3?", [], [])["chat.bot"]
    thought = [m for m in bot if m["role"] == "assistant" and (m.get("metadata") or {}).get("title")]
    assert len(thought) == 1 and words(thought[0]).strip() == "6 + 3 = 9", bot
    assert words(bot[-1]).strip() == "9" and not bot[-1].get("metadata"), bot


@pytest.mark.slow
def test_held_out_prompt_and_compare(app: LiveApp) -> None:
    page = app.client()
    picked = page.call("/chat_heldout", "chatty", -1)
    assert picked["chat.input"] and picked["chat.input"] == picked["chat.compare_input"]
    assert "Held-out prompt 1 of 4" in picked["chat.reference"] and "Reference answer" in picked["chat.reference"]
    again = page.call("/chat_heldout", "chatty", 0)
    assert "Held-out prompt 2 of 4" in again["chat.reference"]
    out = page.call("/chat_compare", "chatty", None, "What is 2 + 2?", 0.0, 1.0, 32, "wait")
    base, trained = out["chat.compare_base"], out["chat.compare_trained"]
    assert "The reply finished in" in out["chat.note"]  # the trained pane's, which streams last
    assert words(base[0]) == words(trained[0]) == "What is 2 + 2?"
    assert words(base[-1]).strip() and words(trained[-1]).strip()
    assert words(base[-1]) != words(trained[-1]), "base and trained panes should differ with the adapter"
    plain = send(page, "What is 2 + 2?", model="base")
    assert words(plain["chat.bot"][-1]) == words(base[-1])  # the base choice is the adapter switched off


@pytest.mark.slow
def test_two_sessions_chatting_at_once_keep_their_own_replies(app: LiveApp) -> None:
    prompts = ["Name a color.", "What is the capital of France?"]
    alone = [words(send(app.client(), p)["chat.bot"][-1]) for p in prompts]
    assert alone[0] != alone[1]
    pages, results = [app.client(), app.client()], [None, None]

    def chat(i: int) -> None:
        results[i] = send(pages[i], prompts[i])

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [words(r["chat.bot"][-1]) for r in results] == alone
    assert [words(r["chat.bot"][0]) for r in results] == prompts


@pytest.mark.slow
def test_release_stops_a_reply_and_drops_the_model(app: LiveApp) -> None:
    page = app.client()
    job = page.client.submit("chatty", "trained", None, 0.0, 1.0, 2000, "wait", "Tell me a very long story.", [], [],
                             api_name="/chat_send")
    deadline = time.time() + 120
    while chat_cache.loaded_key() is None or not chat_cache.busy():
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    began = time.time()
    chat_cache.release()
    assert time.time() - began < 30 and chat_cache.loaded_key() is None and not chat_cache.busy()
    final = job.result(timeout=60)
    assert "a training job is starting" in str(value(final[2]))


def test_a_run_deleted_under_the_page_is_named_not_asked_for(app: LiveApp) -> None:
    page = app.client()
    gone = page.call("/chat_send", "deleted-meanwhile", "trained", None, 0.0, 1.0, 16, "wait", "Hi", [], [])
    assert "Run deleted-meanwhile no longer exists" in gone["chat.note"]
    asked = page.call("/chat_send", None, "trained", None, 0.0, 1.0, 16, "wait", "Hi", [], [])
    assert "Choose a run and type a message first." in asked["chat.note"]
    empty = page.call("/chat_send", "chatty", "trained", None, 0.0, 1.0, 16, "wait", "", [], [])
    assert "Type a message first." in empty["chat.note"]


def test_a_reply_with_only_reasoning_says_it_has_no_answer_once_done() -> None:
    """Its reasoning block is collapsed when done: without a line saying so the bubble looks empty."""
    from grpo_box.chat import ChatChunk
    from grpo_box.ui.chat_tab import NO_ANSWER, _assistant

    streaming = _assistant(ChatChunk.of("", "<think>only thinking</think>", "think"))
    done = _assistant(ChatChunk.of("", "<think>only thinking</think>", "think", done=True))
    assert [m["content"] for m in streaming] == ["only thinking"]  # mid-stream the answer may still come
    assert [m["content"] for m in done] == ["only thinking", NO_ANSWER]
    answered = _assistant(ChatChunk.of("", "<think>2 plus 2</think><answer>4</answer>", "think", done=True))
    assert [m["content"] for m in answered] == ["2 plus 2", "4"]


# -- without the live app -----------------------------------------------------------------------
def test_where_a_queued_reply_runs_is_decided_once_it_holds_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply queued behind another page's: a training job that started meanwhile sends it to the CPU
    (as the user chose), not onto the GPU the job now uses."""
    from grpo_box import chat
    from grpo_box.ui import chat_tab

    training: list[Any] = []
    monkeypatch.setattr(chat_tab.job, "running_run", lambda: training[0] if training else None)
    devices: list[str] = []

    def load(src: ChatSource, device: str, has_gpu: bool = False) -> Any:
        devices.append(device)
        raise RuntimeError("no model here")

    monkeypatch.setattr(chat_cache, "generator", load)
    reg = SimpleNamespace(ctx=SimpleNamespace(hardware=SimpleNamespace(gpu="a GPU")))
    with chat_cache.turn():  # another page's reply holds the model
        reply = chat_tab._generate(reg, ChatSource("m", None, None, None), False, [{"role": "user", "content": "hi"}],
                                   None, chat.CHAT_SAMPLING, "cpu")
        assert "Another page's reply" in next(reply).html
        training.append(SimpleNamespace(path=Path("runs/r1")))  # a job starts before that reply ends
    notes = list(reply)
    assert devices == ["cpu"] and "runs on the CPU instead" in notes[0].html and notes[-1].failed


def test_a_chat_waiting_for_training_lets_go_of_its_gpu_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job started from the CLI (not this app's Start, which releases the model itself): the chat
    that waits for it drops the model it cached on the GPU, so training gets the VRAM. (A model on
    the GPU cannot be loaded here; the cache entry stands in for one.)"""
    from grpo_box import chat
    from grpo_box.ui import chat_tab

    closed: list[bool] = []
    monkeypatch.setitem(chat_cache._loaded, "key", ("m", None, "gpu"))
    monkeypatch.setitem(chat_cache._loaded, "generator", SimpleNamespace(close=lambda: closed.append(True)))
    monkeypatch.setattr(chat_tab.job, "running_run", lambda: SimpleNamespace(path=Path("runs/from-the-cli")))
    reg = SimpleNamespace(ctx=SimpleNamespace(hardware=SimpleNamespace(gpu="a GPU")))
    reply = chat_tab._generate(reg, ChatSource("m", None, None, None), False, [{"role": "user", "content": "hi"}],
                               None, chat.CHAT_SAMPLING, "wait")
    note = next(reply)
    reply.close()
    assert "from-the-cli" in note.html and "waits for it" in note.html
    assert closed == [True] and chat_cache.loaded_key() is None


def test_a_data_source_that_fails_to_load_is_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The held-out picker reads the run's data in the app process; an error the engine does not turn
    into a DataError (`datasets` failing to prepare a cached Hub dataset) must come back as a message."""
    from datasets.exceptions import DatasetGenerationError

    from grpo_box import data
    from grpo_box.ui import chat_tab

    config = RunConfig()
    config.output.runs_dir, config.output.run_name = str(tmp_path / "runs"), "hub"
    create_run(config)

    def fail(cfg: Any) -> Any:
        raise DatasetGenerationError("An error occurred while generating the dataset someone/gone")

    monkeypatch.setattr(data, "load_rows", fail)
    chat_tab._held_out.cache_clear()
    reg = SimpleNamespace(ctx=SimpleNamespace(runs_dir=str(tmp_path / "runs")))
    _, note, index, _ = chat_tab._heldout(reg)("hub", -1)
    assert "No held-out prompts" in note and "DatasetGenerationError: An error occurred" in note
    assert "data.source" in note and index == gr.skip()
    chat_tab._held_out.cache_clear()


def test_the_follower_lets_go_of_an_idle_gpu_chat_model_once_a_job_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job started anywhere (here: as the machine lock reports one) while no page chats: the app's
    background follower drops the chat model cached on the GPU; not while a reply holds it."""
    from grpo_box.ui import watch

    closed: list[bool] = []
    monkeypatch.setitem(chat_cache._loaded, "key", ("m", None, "gpu", None))
    monkeypatch.setitem(chat_cache._loaded, "generator", SimpleNamespace(close=lambda: closed.append(True)))
    monkeypatch.setattr(watch.job, "running_run", lambda: SimpleNamespace(path=Path("runs/from-the-cli")))
    with chat_cache.turn():  # a reply streams: it is left alone (the next reply sees the job)
        watch.follow_once()
    assert closed == [] and chat_cache.loaded_key() is not None
    watch.follow_once()
    assert closed == [True] and chat_cache.loaded_key() is None
