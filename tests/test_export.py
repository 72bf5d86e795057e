"""Merge, GGUF export, verification and Modelfile, on the bundled model with a synthetic LoRA.

No training: the run directory is made with `runs.create_run`, and its adapter is a PEFT LoRA on
the bundled SmolLM2-135M whose `lora_B` weights are small random values, so the merge really
changes the weights (and some greedy replies). Everything runs offline on CPU.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import make_random_lora

from grpo_box import export as export_mod
from grpo_box import gguf_check, hub
from grpo_box import llama_tools
from grpo_box.config import RunConfig
from grpo_box.export import (
    DiskSpaceError,
    ExportError,
    export_run,
    find_gguf,
    render_modelfile_template,
)
from grpo_box.inference import run_adapter_dir
from grpo_box.merge import (
    NoAdapterError,
    UnsupportedArchitectureError,
    adapter_fingerprint,
    merge_run,
    merge_with_report,
    merged_is_current,
    require_adapter,
)
from grpo_box.models import BaseWeightsMissingError
from grpo_box.runs import RunDir, create_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHAT_CASES = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke."}],
]


# -- fixtures ----------------------------------------------------------------------------------
def make_run(root: Path, name: str, model: str | None = None, shown_format: bool = False) -> RunDir:
    """A run folder; `shown_format` turns on the one-shot turn and the <think> prefill (the cpu preset's)."""
    config = RunConfig()
    config.output.runs_dir = str(root)
    config.output.run_name = name
    config.data.one_shot = config.data.prefill = shown_format
    if model:
        config.model.name = model
    return create_run(config)


def add_random_lora(run: RunDir, model_dir: Path, std: float = 0.04, seed: int = 0) -> None:
    """A LoRA over the run's target modules with non-zero lora_B, saved like training saves it."""
    make_random_lora(model_dir, run.adapter_dir, r=8, alpha=16, targets=run.config().lora.target_modules, std=std,
                     seed=seed)


def stub_adapter(run: RunDir) -> None:
    """Just enough of an adapter for the checks that run before any weights are loaded."""
    run.adapter_dir.mkdir(parents=True, exist_ok=True)
    (run.adapter_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))


def fake_base(tmp: Path, bundled: Path, **overrides: Any) -> Path:
    """The bundled model with a changed config.json (weights and tokenizer linked, not copied)."""
    tmp.mkdir(parents=True)
    for item in bundled.iterdir():
        if item.name != "config.json":
            (tmp / item.name).symlink_to(item)
    config = json.loads((bundled / "config.json").read_text())
    config.update(overrides)
    (tmp / "config.json").write_text(json.dumps(config))
    return tmp


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, bundled_model_dir: Path) -> dict[str, Any]:
    """One run merged and exported to q4_k_m + f16; the tests below inspect the result. The run
    prompts like the cpu preset (one-shot turn, <think> prefill), so every check covers that too."""
    run = make_run(tmp_path_factory.mktemp("runs"), "demo", shown_format=True)
    add_random_lora(run, bundled_model_dir)
    events: dict[str, list[tuple[str, float]]] = {"merge": [], "export": []}
    merge = merge_with_report(run.path, progress=lambda m, f: events["merge"].append((m, f)))
    # q4_k_m first: it is quantized from a temporary f16, the path whose progress once went backwards
    report = export_run(run.path, ["q4_k_m", "f16"], progress=lambda m, f: events["export"].append((m, f)))
    return {"run": run, "merge": merge, "report": report, "events": events}


def _file(report: Any, quant: str) -> Any:
    return next(f for f in report.files if f.quant == quant)


def _snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb") as fh:
                head = hashlib.sha256(fh.read(1 << 20)).hexdigest()
            out[str(path.relative_to(folder))] = (path.stat().st_size, path.stat().st_mtime_ns, head)
    return out


# -- merge -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_merge_matches_base_plus_adapter_and_changes_the_model(exported: dict[str, Any], bundled_model_dir: Path) -> None:
    from safetensors import safe_open

    merge = exported["merge"]
    merged = Path(merge.merged_dir)
    assert merged == exported["run"].path / "export" / "merged"
    assert merge.ok and merge.matches == len(merge.prompts) >= 3
    assert merge.changed_vs_base >= 1, "the random LoRA should change at least one greedy reply"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (merged / name).is_file(), name
    assert "<|im_start|>" in (merged / "chat_template.jinja").read_text()
    key = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(merged / "model.safetensors"), "pt") as a, safe_open(str(bundled_model_dir / "model.safetensors"), "pt") as b:
        assert not a.get_tensor(key).equal(b.get_tensor(key)), "merge_and_unload did not change the weights"
    assert not list(merged.parent.glob(".merged*")), "temporary merge folders were left behind"
    for case in merge.prompts:  # the top logits export uses to recognise near-ties
        assert len(case["merged_top"]) == len(case["merged_ids"])
        assert [step[0][0] for step in case["merged_top"]] == case["merged_ids"], "greedy = top-1"
        assert all(a[1] >= b[1] for step in case["merged_top"] for a, b in zip(step, step[1:]))


COMPARE_CASE = {"merged_ids": [5, 6, 7], "merged_top": [[[5, 3.0], [9, 1.0]], [[6, 2.00], [8, 1.95], [4, 1.0]],
                                                        [[7, 1.0], [2, 0.5]]]}


@pytest.mark.parametrize(("got", "verdict", "gap"), [
    ([5, 6, 7], "identical", None),
    ([5, 8, 1], "near-tie", 0.05),  # parts where the merged model's top two were 0.05 apart
    ([5, 4, 7], "differs", 1.0),  # in the top logits but 1.0 below: a real difference
    ([9, 6, 7], "differs", 2.0),
    ([5, 3, 7], "differs", None),  # not among the kept top logits
    ([5, 6], "differs", None),  # stopped early
])
def test_compare_to_merged(got: list[int], verdict: str, gap: float | None) -> None:
    got_verdict, got_gap = gguf_check.compare_to_merged(got, COMPARE_CASE)
    assert got_verdict == verdict
    assert got_gap == (None if gap is None else pytest.approx(gap))
    assert gguf_check.compare_to_merged([5, 8], {"merged_ids": [5, 6]}) == ("differs", None)  # no logits kept


def test_eos_check_wants_every_hf_eos_to_end_generation_in_llama_cpp(bundled_tokenizer: Any) -> None:
    """On the bundled GGUF: <|im_end|> (its EOS) ends generation in llama.cpp, <|im_start|> does not."""
    from llama_cpp import Llama

    from grpo_box.export_report import GGUFResult
    from grpo_box.models import bundled_gguf_path

    im_end, im_start = bundled_tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    llm = Llama(model_path=str(bundled_gguf_path()), n_ctx=64, verbose=False)
    try:
        results = [GGUFResult("q4_1", "m.gguf", 0, 0.0) for _ in range(2)]
        gguf_check._check_eos(llm, bundled_tokenizer, [im_end], results[0])
        gguf_check._check_eos(llm, bundled_tokenizer, [im_end, im_start], results[1])
    finally:
        llm.close()
    assert results[0].eos_ok and results[0].eos_token == "<|im_end|>" and not results[0].notes
    assert not results[1].eos_ok and "does not end generation at ['<|im_start|>']" in results[1].notes[0]


# -- GGUF export -------------------------------------------------------------------------------
@pytest.mark.slow
def test_f16_gguf_reproduces_merged_greedy_tokens(exported: dict[str, Any]) -> None:
    f16 = _file(exported["report"], "f16")
    assert Path(f16.path).is_file() and f16.size_bytes > 100e6
    assert f16.verified and f16.prompts >= 3 and f16.identical + f16.near_ties == f16.prompts
    assert f16.tokenizer_match and f16.chat_template_ok
    assert f16.eos_token == "<|im_end|>" and f16.eos_ok
    assert f16.chat_stops and f16.chat_reply.strip()
    assert f16.ok


@pytest.mark.slow
def test_f16_gguf_parity_checked_independently(exported: dict[str, Any]) -> None:
    """Not trusting the report: HF greedy on the merged model vs llama.cpp greedy on the f16 file."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = Path(exported["merge"].merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    llm = Llama(model_path=_file(exported["report"], "f16").path, n_ctx=512, seed=0, verbose=False)
    try:
        eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert llm.token_eos() == eos
        identical = 0
        for messages in CHAT_CASES:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            hf = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=eos,
                                pad_token_id=eos)[0, len(ids):].tolist()
            ours = gguf_check.llama_greedy(llm, ids, 16, {eos})
            if ours == hf:
                identical += 1
                continue
            # f16 rounding of the weights may flip a near-tie: then both tokens score alike in HF
            i = next(i for i, (a, b) in enumerate(zip(hf, ours)) if a != b)
            with torch.no_grad():
                logits = model(torch.tensor([ids + hf[:i]])).logits[0, -1]
            assert float(logits[hf[i]] - logits[ours[i]]) < 0.25, (messages, hf, ours)
        assert identical >= len(CHAT_CASES) - 1
        # the check prompt (run system prompt + question) whose merged reply ended at EOS
        case = next(c for c in exported["merge"].prompts if c["merged_ids"][-1] == eos)
        reply = llm.create_chat_completion(messages=case["messages"], max_tokens=200, temperature=0.0)
        assert reply["choices"][0]["finish_reason"] == "stop"
        raw = gguf_check.llama_greedy(llm, case["prompt_ids"], 200, {eos})
        assert raw[-1] == eos, "the reply must end with <|im_end|>"
    finally:
        llm.close()


@pytest.mark.slow
def test_q4_k_m_loads_and_reports_token_agreement(exported: dict[str, Any]) -> None:
    q4 = _file(exported["report"], "q4_k_m")
    f16 = _file(exported["report"], "f16")
    assert Path(q4.path).is_file() and 0 < q4.size_bytes < f16.size_bytes / 2
    # Measured here: 0.565 of each merged reply's tokens before the first difference (0/3 identical:
    # a 135M model with half its tensors in q4 drifts within 32 tokens). A broken file gives ~0.
    assert q4.prompts >= 3 and q4.prefix_agreement >= 0.3, q4
    assert q4.chat_template_ok and q4.eos_token == "<|im_end|>" and q4.eos_ok
    assert q4.chat_stops and q4.chat_reply.strip(), "a q4 chat reply must end at <|im_end|> too"
    assert re.fullmatch(r"\d+/\d+", q4.fallback_tensors), "SmolLM's 576-wide rows make llama.cpp fall back"
    assert find_gguf(exported["run"].path) == Path(q4.path)
    assert find_gguf(exported["run"].path, "f16") == Path(f16.path)


@pytest.mark.slow
def test_report_is_json_and_has_a_table(exported: dict[str, Any]) -> None:
    report = exported["report"]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and {f["quant"] for f in data["files"]} == {"f16", "q4_k_m"}
    assert json.loads((exported["run"].path / "export" / "export.json").read_text())["ok"] is True
    table = report.format_table()
    assert "demo-f16.gguf" in table and "demo-q4_k_m.gguf" in table and "identical" in table
    assert "ollama create demo:q4_k_m -f" in table
    assert data["converter"]["gguf"]["used"] == "vendored"


@pytest.mark.slow
def test_progress_is_reported_in_order(exported: dict[str, Any]) -> None:
    for name, events in exported["events"].items():
        fractions = [f for _, f in events]
        assert fractions and fractions[-1] == 1.0, name
        assert all(0.0 <= f <= 1.0 for f in fractions), name
        assert fractions == sorted(fractions), f"{name} progress went backwards"


# -- Modelfile ---------------------------------------------------------------------------------
def _modelfile_parts(text: str) -> dict[str, Any]:
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M)
    return {
        "from": re.search(r"^FROM (.+)$", text, re.M).group(1),
        "template": template.group(1) if template else None,
        "stops": re.findall(r'^PARAMETER stop "(.*)"$', text, re.M),
        "system": system.group(1) if system else None,
    }


@pytest.mark.slow
def test_modelfile_template_renders_like_the_hf_chat_template(exported: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    from grpo_box.chat_format import without_one_shot
    from grpo_box.prompts import get_template, system_prompt

    report, run = exported["report"], exported["run"]
    q4 = _file(report, "q4_k_m")
    path = Path(q4.modelfile)
    parts = _modelfile_parts(path.read_text())
    assert parts["from"] == "./demo-q4_k_m.gguf" and (path.parent / parts["from"]).is_file()
    assert {"<|im_end|>", "<|im_start|>"} <= set(parts["stops"])
    assert parts["system"] == system_prompt(run.config().data)
    question, reply = get_template(run.config().data.template).example  # the one-shot turn, before every chat
    assert f'MESSAGE user """{question}"""\nMESSAGE assistant """{reply}"""' in path.read_text()
    assert parts["template"].endswith("<|im_start|>assistant\n<think>\n")  # the prefill, as in training
    assert q4.ollama_command == f"ollama create demo:q4_k_m -f {path}"
    assert Path(report.modelfile).read_text() == path.read_text()
    tokenizer = AutoTokenizer.from_pretrained(exported["merge"].merged_dir)
    shot = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    system = [{"role": "system", "content": parts["system"]}]
    for chat in [c for c in CHAT_CASES if c[0]["role"] != "system"] + [[{"role": "user", "content": "7*6?"}]]:
        # Ollama's conversation: the Modelfile's SYSTEM, its MESSAGE turn, then the chat; the merged
        # model's own template adds that turn itself after the system prompt
        expected = tokenizer.apply_chat_template(system + chat, tokenize=False, add_generation_prompt=True)
        assert render_modelfile_template(parts["template"], system + shot + chat) == expected, chat
    for chat in CHAT_CASES:  # without the one-shot block, the template is the plain ChatML one plus the prefill
        expected = tokenizer.apply_chat_template(chat, chat_template=without_one_shot(tokenizer.chat_template),
                                                 tokenize=False, add_generation_prompt=True)
        assert render_modelfile_template(parts["template"], chat) == expected, chat


@pytest.mark.slow
def test_q4_k_m_gguf_answers_in_the_runs_format_in_llama_cpp(exported: dict[str, Any]) -> None:
    """Held-out questions of the run to the q4_k_m GGUF in llama.cpp: its template carries the
    run's one-shot turn and prefill, and its replies take the think/answer format as often as the
    merged HF model's do (a random LoRA, not a trained one: bench/learning_demo.py measures that)."""
    from grpo_box.data import load_rows
    from grpo_box.inference import from_gguf, load_for_generation
    from grpo_box.rewards.format import think_format

    run = exported["run"]
    _, held_out = load_rows(run.config())
    # system prompt and question only, as a client such as Open WebUI sends them: the GGUF's own
    # template adds the one-shot turn and the prefill
    prompts = [[p[0], p[-1]] for p in list(held_out["prompt"])[:8]]
    gguf = from_gguf(_file(exported["report"], "q4_k_m").path)
    hf = load_for_generation(exported["merge"].merged_dir)
    try:
        assert gguf.prefill == hf.prefill == "<think>\n"
        shapes = {name: think_format(None, [r[0] for r in gen.generate(prompts, max_new_tokens=48)])
                  for name, gen in (("gguf", gguf), ("hf", hf))}
    finally:
        gguf.close()
        hf.close()
    full = {name: sum(s == 1.0 for s in scores) for name, scores in shapes.items()}
    assert full["gguf"] >= 4, shapes  # at least half the held-out replies in the full format
    assert abs(full["gguf"] - full["hf"]) <= 2, shapes  # 4-bit keeps the behaviour the merged model has


# Llama-3's chat format, written like Meta's template (BOS first, contents trimmed); the optional
# default system turn is what Llama 3.1/3.2 templates add (there with a date in it).
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- if messages[0]['role'] != 'system' and default_system is defined %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + default_system + '<|eot_id|>' }}{%- endif %}"
    "{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim"
    " + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def _llama3_tokenizer(bundled_tokenizer: Any, template: str) -> Any:
    """The bundled tokenizer with a Llama-3 chat template and special tokens (text only: no download)."""
    import copy

    tokenizer = copy.deepcopy(bundled_tokenizer)
    tokenizer.chat_template = template
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    return tokenizer


PROBE_CASES = [*CHAT_CASES, [{"role": "system", "content": "Think first."}, {"role": "user", "content": "7*6?"}]]


@pytest.mark.parametrize("default_system", [None, "You are Llama."])
def test_llama3_modelfile_template_renders_like_the_hf_template(bundled_tokenizer: Any,
                                                                default_system: str | None) -> None:
    from grpo_box.modelfile import LLAMA3, modelfile_text, parse_stops, stop_tokens, translate_template

    template = LLAMA3_TEMPLATE if default_system is None else \
        "{%- set default_system = " + json.dumps(default_system) + " %}" + LLAMA3_TEMPLATE
    tokenizer = _llama3_tokenizer(bundled_tokenizer, template)
    translation = translate_template(tokenizer)
    assert translation.chat_format is LLAMA3 and translation.template is not None, translation.note
    assert "<|begin_of_text|>" not in translation.template, "llama.cpp adds the BOS itself"
    for messages in PROBE_CASES:
        hf = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert hf.startswith("<|begin_of_text|>")
        assert render_modelfile_template(translation.template, messages) == hf[len("<|begin_of_text|>"):], messages
    stops = stop_tokens(tokenizer, translation.chat_format)
    assert stops == ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    assert parse_stops(modelfile_text("m.gguf", translation.template, stops, None)) == stops


def test_modelfile_without_a_translatable_template_says_why(bundled_tokenizer: Any) -> None:
    from grpo_box.modelfile import CHATML, LLAMA3, modelfile_text, stop_tokens, translate_template

    assert translate_template(bundled_tokenizer).chat_format is CHATML  # SmolLM: ChatML, TEMPLATE written
    dated = "{%- set default_system = 'Cutting Knowledge Date: December 2023\\n\\n' %}" + LLAMA3_TEMPLATE.replace(
        "m['content'] | trim", "(('Cutting Knowledge Date: December 2023\\n\\n' if m['role'] == 'system' else '')"
                               " + m['content']) | trim")
    for template, fmt, says in [
        (dated, LLAMA3, "looks like Llama-3 but renders differently"),
        ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}", None, "neither ChatML nor Llama-3"),
    ]:
        translation = translate_template(_llama3_tokenizer(bundled_tokenizer, template))
        assert translation.template is None and translation.chat_format is fmt and says in translation.note
    tokenizer = _llama3_tokenizer(bundled_tokenizer, "{{ messages[0]['content'] }}")
    stops = stop_tokens(tokenizer, None, eos_ids=[bundled_tokenizer.eos_token_id])
    assert stops == ["<|eot_id|>", "<|im_end|>"], "every EOS of the generation config is a stop"
    text = modelfile_text("m-q4_k_m.gguf", None, stops, "Think first.")
    assert text.splitlines() == ["FROM ./m-q4_k_m.gguf", 'PARAMETER stop "<|eot_id|>"', 'PARAMETER stop "<|im_end|>"',
                                 'SYSTEM """Think first."""']


def test_render_modelfile_template_go_subset() -> None:
    template = (
        "{{- if .System }}S={{ .System }}\n{{ else }}no system\n{{ end }}\n"
        "{{- range .Messages }}{{ if eq .Role \"user\" }}U:{{ .Content }}{{ else }}{{ .Role }}:{{ .Content }}{{ end }};"
        "{{ end -}}\n   END{{ if not $.System }}!{{ end }}{{ \"{{\" }}"
    )
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]
    assert render_modelfile_template(template, msgs) == "no system\nU:a\n\nb;assistant:c;END!{{"
    with_system = [{"role": "system", "content": "x"}, *msgs]
    assert render_modelfile_template(template, with_system).startswith("S=x\nsystem:x;U:a")
    with pytest.raises(ValueError):
        render_modelfile_template("{{ if .System }}unclosed", msgs)


# -- failures ----------------------------------------------------------------------------------
def test_export_and_merge_without_adapter_say_train_first(tmp_path: Path) -> None:
    run = make_run(tmp_path, "untrained")
    with pytest.raises(NoAdapterError, match="train first"):
        export_run(run.path)
    with pytest.raises(NoAdapterError, match="train first"):
        merge_run(run.path)


def test_merge_takes_the_checkpoint_that_chat_and_eval_load(tmp_path: Path, bundled_model_dir: Path) -> None:
    """adapter/ saved at step 2, checkpoint-3 newer (a `resume --steps N` cut short): merge and
    export use checkpoint-3, as `inference.run_adapter_dir` does, and the report says so."""
    run = make_run(tmp_path, "cut-short")
    stub_adapter(run)  # never loaded: merge must not pick it
    run.record_adapter_step(2)
    checkpoint = run.path / "checkpoints" / "checkpoint-3"
    make_random_lora(bundled_model_dir, checkpoint, r=8, alpha=16, targets=run.config().lora.target_modules, std=0.04)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    assert require_adapter(run) == checkpoint == run_adapter_dir(run)

    report = merge_with_report(run.path, prompts=("What is 7 + 5?",), max_new_tokens=4)
    assert report.adapter == str(checkpoint) and report.adapter_fingerprint == adapter_fingerprint(checkpoint)
    assert any("checkpoints/checkpoint-3" in note and "step 2" in note for note in report.warnings)
    assert merged_is_current(run)  # export would not merge again
    run.record_adapter_step(3)  # adapter/ is now the newest: the merge of checkpoint-3 is out of date
    assert require_adapter(run) == run.adapter_dir and not merged_is_current(run)


@pytest.mark.slow
def test_full_disk_is_refused_and_earlier_exports_stay(exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    export_dir = exported["run"].path / "export"
    before = _snapshot(export_dir)
    monkeypatch.setattr(export_mod, "free_bytes", lambda path: 50 * 2**20)
    with pytest.raises(DiskSpaceError, match=r"not enough free disk space .* needs about .* only 50 MB is free"):
        export_run(exported["run"].path, ["f16", "q8_0"])
    assert _snapshot(export_dir) == before


@pytest.mark.slow
def test_failed_conversion_leaves_earlier_exports_and_no_partial_files(exported: dict[str, Any],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    export_dir = exported["run"].path / "export"
    before = _snapshot(export_dir)

    def broken(model_dir: Path, outfile: Path, outtype: str, log: Path, progress: Any) -> None:
        outfile.write_bytes(b"GGUF half written")
        raise llama_tools.ConversionError("converter crashed half way")

    monkeypatch.setattr(export_mod, "_convert", broken)
    with pytest.raises(llama_tools.ConversionError, match="half way"):
        export_run(exported["run"].path, ["f16"])
    assert _snapshot(export_dir) == before
    assert not [p for p in export_dir.rglob("*") if p.name.endswith(".partial")]


@pytest.mark.slow
def test_disk_full_at_the_last_quant_keeps_the_earlier_export(exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """f16 converts for real, then the disk fills up at q8_0: the new f16 must not replace the old
    one (export.json would describe another file), and the CLI says what happened in one line."""
    import errno

    from grpo_box.__main__ import main

    export_dir = exported["run"].path / "export"
    before = _snapshot(export_dir)
    convert = export_mod._convert

    def full_at_q8_0(model_dir: Path, outfile: Path, outtype: str, log: Path, progress: Any) -> None:
        if outtype == "q8_0":
            raise OSError(errno.ENOSPC, "No space left on device", str(outfile))
        convert(model_dir, outfile, outtype, log, progress)

    monkeypatch.setattr(export_mod, "_convert", full_at_q8_0)
    assert main(["export", str(exported["run"].path), "--quant", "f16,q8_0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: export failed while writing: [Errno 28] No space left on device") and "Traceback" not in err
    assert "Free disk space" in err
    without_logs = {k: v for k, v in before.items() if not k.startswith("logs/")}  # logs tell of the failed try
    assert {k: v for k, v in _snapshot(export_dir).items() if not k.startswith("logs/")} == without_logs
    assert not [p for p in export_dir.rglob("*") if p.name.endswith(".partial")]


def test_unsupported_architecture_for_the_converter(tmp_path: Path, bundled_model_dir: Path) -> None:
    base = fake_base(tmp_path / "foo", bundled_model_dir, architectures=["FooBarForCausalLM"])
    run = make_run(tmp_path / "runs", "foo", model=str(base))
    stub_adapter(run)
    with pytest.raises(UnsupportedArchitectureError, match="FooBarForCausalLM.*cannot turn it into GGUF"):
        export_run(run.path)
    assert not (run.path / "export" / "merged").exists()


def test_unsupported_architecture_for_the_merge(tmp_path: Path, bundled_model_dir: Path) -> None:
    base = fake_base(tmp_path / "bar", bundled_model_dir, model_type="foo_bar", architectures=["FooBarModel"])
    run = make_run(tmp_path / "runs", "bar", model=str(base))
    stub_adapter(run)
    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture.*foo_bar"):
        merge_run(run.path)


def test_missing_16bit_base_is_explained(tmp_path: Path) -> None:
    run = make_run(tmp_path, "hub", model="nobody-here/Tiny-Model-unsloth-bnb-4bit")
    stub_adapter(run)
    with pytest.raises(BaseWeightsMissingError) as err:
        merge_run(run.path)
    message = str(err.value)
    assert "nobody-here/Tiny-Model" in message and "hf download" in message
    assert "--allow-4bit-merge (CLI) / allow_4bit_merge=True" in message and "--download-base" in message
    assert (err.value.repo, err.value.tried_4bit) == ("nobody-here/Tiny-Model", False)  # for the app's own wording
    assert err.value.why == "the 16-bit weights of nobody-here/Tiny-Model are not in the local Hugging Face cache"
    with pytest.raises(BaseWeightsMissingError, match="no 4-bit checkpoint") as err:
        merge_run(run.path, allow_4bit_merge=True)
    assert err.value.tried_4bit


@pytest.mark.slow
def test_4bit_merge_fallback_warns_and_the_export_report_says_so(tmp_path: Path, bundled_model_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A base with only 4-bit weights on disk: refused by default, merged with allow_4bit_merge and a
    warning that reaches the export report. Loading bitsandbytes 4-bit weights needs CUDA, so that
    one loader is replaced by a float load of the same model."""
    import torch
    from transformers import AutoModelForCausalLM

    from grpo_box import merge as merge_mod

    base = fake_base(tmp_path / "Tiny-bnb-4bit", bundled_model_dir,
                     quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    run = make_run(tmp_path / "runs", "q4base", model=str(base))
    add_random_lora(run, bundled_model_dir)
    loaded: list[Any] = []

    def dequantized(source: Any) -> tuple[Any, str]:
        loaded.append(source)
        return AutoModelForCausalLM.from_pretrained(str(bundled_model_dir), dtype=torch.float32).eval(), "float32"

    monkeypatch.setattr(merge_mod, "_load_dequantized_4bit", dequantized)
    with pytest.raises(BaseWeightsMissingError, match="--allow-4bit-merge"):
        merge_run(run.path)
    with pytest.warns(UserWarning, match="DEQUANTIZED 4-bit weights"):
        merge = merge_with_report(run.path, allow_4bit_merge=True, max_new_tokens=8)
    assert merge.base_4bit and [s.quantized_4bit for s in loaded] == [True] and merge.ok
    assert any("DEQUANTIZED" in w for w in merge.warnings)
    report = export_run(run.path, ["f16"], allow_4bit_merge=True, verify=False)
    assert any("DEQUANTIZED" in w for w in report.warnings)
    assert "warning: merging into DEQUANTIZED 4-bit weights" in report.format_table()
    saved = json.loads((run.path / "export" / "export.json").read_text())
    assert any("DEQUANTIZED" in w for w in saved["warnings"])


def test_unknown_quantization_lists_the_valid_ones(tmp_path: Path) -> None:
    run = make_run(tmp_path, "q")
    stub_adapter(run)
    with pytest.raises(ExportError, match="unknown quantization 'q9_x'.*q4_k_m"):
        export_run(run.path, ["q9_x"])


# -- LoRA GGUF ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_lora_gguf_on_base_matches_the_merged_model(exported: dict[str, Any]) -> None:
    report = export_run(exported["run"].path, quants=[], lora=True)
    lora = report.lora
    assert lora is not None and Path(lora.path).is_file() and lora.path.endswith("demo-lora-f16.gguf")
    assert lora.tensors > 0 and lora.alpha == 16.0
    assert lora.prompts >= 3 and lora.identical + lora.near_ties == lora.prompts, \
        "base f16 GGUF + LoRA GGUF must reproduce the merged model (up to near-ties)"
    assert "--lora" in lora.usage and lora.ok
    assert Path(_file(exported["report"], "f16").path).is_file(), "a LoRA export must not touch the model GGUFs"
    listed = json.loads((exported["run"].path / "export" / "export.json").read_text())
    assert {f["quant"] for f in listed["files"]} == {"f16", "q4_k_m"} and listed["lora"]["path"] == lora.path


# -- converter and Hub push --------------------------------------------------------------------
def test_converter_is_pinned_and_uses_vendored_gguf_py() -> None:
    from grpo_box.models import data_home

    script = llama_tools.ensure_converter()
    version = llama_tools.llama_cpp_version()
    assert script.parent == data_home() / f"llama.cpp-{version}" and script.is_file()
    assert (script.parent / "convert_lora_to_gguf.py").is_file() and (script.parent / "conversion").is_dir()
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"} <= llama_tools.supported_architectures()
    versions = llama_tools.gguf_versions()
    assert versions["used"] == "vendored" and versions["vendored"]
    env = llama_tools.converter_env()
    assert env["PYTHONPATH"].split(":")[0] == str(script.parent / "gguf-py") and "NO_LOCAL_GGUF" not in env


def test_missing_converter_says_run_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPO_BOX_HOME", str(tmp_path))
    monkeypatch.setattr(llama_tools, "_pip_cache_dir", lambda: None)
    with pytest.raises(llama_tools.ConverterMissingError, match=r"\./install\.sh"):
        llama_tools.ensure_converter()


def test_prepare_converter_extracts_only_the_converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sdist = llama_tools.find_sdist()
    if sdist is None:
        pytest.skip("no llama-cpp-python sdist on disk (install.sh downloads it)")
    monkeypatch.setenv("GRPO_BOX_HOME", str(tmp_path))
    script = llama_tools.prepare_converter(sdist)
    assert script == tmp_path / f"llama.cpp-{llama_tools.llama_cpp_version()}" / "convert_hf_to_gguf.py"
    names = {p.name for p in script.parent.iterdir()}
    assert {"convert_lora_to_gguf.py", "conversion", "gguf-py", "LICENSE", "grpo_box_converter.json"} <= names
    assert "ggml" not in names and "src" not in names, "only the converter files, not the C++ tree"
    assert llama_tools.ensure_converter() == script
    (script.parent / "stale.txt").write_text("from an earlier extraction")
    assert llama_tools.prepare_converter(sdist) == script  # again over the first: swapped in whole
    assert not (script.parent / "stale.txt").exists() and script.is_file()
    assert [p.name for p in script.parent.parent.iterdir()] == [script.parent.name]  # no temporary or old folder


def test_push_of_a_folder_leaves_local_paths_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The merge report stays local; files naming local paths go up with only the last component."""
    import fnmatch

    import huggingface_hub

    base = tmp_path / "models" / "smollm2-135m-instruct"
    base.mkdir(parents=True)
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "grpo_box_merge.json").write_text(json.dumps({"merged_dir": str(folder), "base_path": str(base)}))
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 8}))
    (folder / "README.md").write_text(f"base_model: {base}\nSee /usr and a/b/c.\n")
    uploaded: dict[str, bytes] = {}

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            pass

        def create_repo(self, repo_id: str, **kw: Any) -> None:
            pass

        def upload_folder(self, folder_path: str, repo_id: str, ignore_patterns: list[str]) -> None:
            for file in Path(folder_path).iterdir():
                if not any(fnmatch.fnmatch(file.name, pat) for pat in ignore_patterns):
                    uploaded[file.name] = file.read_bytes()

        def upload_file(self, path_or_fileobj: Any, path_in_repo: str, repo_id: str) -> None:
            uploaded[path_in_repo] = path_or_fileobj

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    hub.push_to_hub(folder, "me/model", "hf_token")
    assert set(uploaded) == {"config.json", "adapter_config.json", "README.md"}
    assert not any(str(tmp_path).encode() in data for data in uploaded.values())
    assert json.loads(uploaded["adapter_config.json"]) == {"base_model_name_or_path": "smollm2-135m-instruct", "r": 8}
    assert uploaded["README.md"] == b"base_model: smollm2-135m-instruct\nSee /usr and a/b/c.\n"


def test_push_to_hub_never_leaks_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    token = "hf_SECRETsecretSECRET123"
    seen: dict[str, Any] = {}

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            seen["token"] = token

        def create_repo(self, repo_id: str, **kw: Any) -> None:
            seen["repo"] = repo_id

        def upload_file(self, **kw: Any) -> None:
            raise RuntimeError(f"401 Unauthorized for token {token}")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ExportError) as err:
        hub.push_to_hub(gguf, "me/model", token)
    assert token not in str(err.value) and "***" in str(err.value) and err.value.__cause__ is None
    assert seen == {"token": token, "repo": "me/model"}
    assert not any(token.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


# -- command line (in-process, on the exported run) --------------------------------------------
@pytest.mark.slow
def test_cli_chat_labels_the_answer_and_base_keeps_the_run_system_prompt(exported: dict[str, Any],
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The merge's greedy references were made with the run's system prompt, for base and trained
    model alike; without that prompt the base model answers this question differently."""
    from transformers import AutoTokenizer

    from grpo_box import chat
    from grpo_box.__main__ import main

    merge, run = exported["merge"], exported["run"]
    tokenizer = AutoTokenizer.from_pretrained(merge.merged_dir)
    case = next(c for c in merge.prompts  # a question the random LoRA answers differently
                if tokenizer.decode(c["base_ids"], skip_special_tokens=True).strip() != c["merged_text"].strip())
    args = ["chat", str(run.path), "--prompt", case["messages"][-1]["content"], "--temperature", "0",
            "--max-tokens", str(merge.max_new_tokens)]
    try:
        outputs = []
        for extra in (["--base"], [], ["--compare"]):
            assert main([*args, *extra]) == 0
            outputs.append(capsys.readouterr().out)
    finally:
        chat.clear_cache()
    prefill = "<think>\n"  # the run's: chat shows whole replies, the prompt's tag included
    base = chat.format_sections(*chat.split_think_answer(
        prefill + tokenizer.decode(case["base_ids"], skip_special_tokens=True), "think"))
    trained = chat.format_sections(*chat.split_think_answer(prefill + case["merged_text"], "think"))
    assert base != trained and base.startswith("[thinking]\n")
    assert outputs[0] == f"{base}\n"
    assert outputs[1] == f"{trained}\n"
    assert outputs[2] == f"=== base model ===\n{base}\n\n=== trained model ===\n{trained}\n\n"


@pytest.mark.slow
def test_cli_export_json_and_merge_report_their_checks(exported: dict[str, Any],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from grpo_box.__main__ import main

    run = exported["run"].path
    assert main(["export", str(run), "--quant", "f16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and [f["quant"] for f in data["files"]] == ["f16"]
    f16 = data["files"][0]
    assert f16["verified"] and f16["modelfile_stops_ok"]
    assert Path(f16["path"]).is_file() and Path(f16["modelfile"]).is_file()
    assert main(["merge", str(run)]) == 0
    out = capsys.readouterr().out
    prompts = len(exported["merge"].prompts)
    assert f"Check: {prompts}/{prompts} greedy replies of the merged model match base + adapter (match)" in out
    assert f"Merged model: {run / 'export' / 'merged'}" in out


@pytest.mark.parametrize(("counts", "exact", "said"), [
    ((3, 0, 3, 1.0), True, "3/3 identical"),
    ((2, 1, 3, 0.9), True, "2/3 identical, 1 near-tie"),
    ((1, 0, 3, 0.42), True, "1/3 identical (42% prefix)"),
    ((0, 0, 3, 0.565), False, "56% of tokens match before the first difference (quantized: differences expected)"),
    ((3, 0, 3, 1.0), False, "3/3 identical"),
])
def test_parity_words_do_not_read_as_a_failure_on_a_quantized_file(counts: tuple[int, int, int, float], exact: bool,
                                                                    said: str) -> None:
    from grpo_box.export_report import parity_text

    assert parity_text(*counts, exact=exact) == said


def test_a_tokenizer_mismatch_fails_the_file_and_shows_in_the_table() -> None:
    """`tokenizer_match` decides `ok`, so the table shows it (with a note), not only "ok: NO"."""
    from grpo_box.export_report import ExportReport, GGUFResult

    checked = dict(verified=True, prompts=3, identical=3, chat_template_ok=True, eos_ok=True, eos_token="<|im_end|>",
                   chat_stops=True, modelfile_stops_ok=True)
    good = GGUFResult("f16", "/x/demo-f16.gguf", 10, 1.0, tokenizer_match=True, **checked)
    bad = GGUFResult("q8_0", "/x/demo-q8_0.gguf", 10, 1.0, tokenizer_match=False, **checked)
    assert good.ok and not bad.ok
    lines = ExportReport("demo", "/x", None, files=[good, bad]).format_table().splitlines()
    header = next(line for line in lines if "tokens vs merged HF" in line).split()
    row = next(line for line in lines if line.startswith("demo-q8_0.gguf")).split()
    assert "tokenizer" in header and row[-1] == "NO" and "BAD" in row
    assert any("demo-q8_0.gguf: llama.cpp tokenizes the check prompts unlike the HF tokenizer" in line
               for line in lines)
