"""Command line: `python -m grpo_box <command>`; the same engine functions the app calls.

Heavy libraries (torch, unsloth, trl) are imported inside the commands that need them, so
`presets`, `estimate`, `runs` and `rewards list` answer instantly, and training imports unsloth
before anything else imports transformers.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .text_table import text_table

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable:
        COMMANDS[name] = fn
        return fn

    return register


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """`columns` of dict `rows` under a header row; a missing or None value shows as "-"."""
    return text_table([columns] + [["-" if r.get(c) is None else r[c] for c in columns] for r in rows])


# -- setup ----------------------------------------------------------------------------------------
@command("presets")
def cmd_presets(args: argparse.Namespace) -> int:
    from .hardware import detect_gpu
    from .presets import list_presets, load_preset, propose_preset

    rows = []
    for info in list_presets():
        cfg = load_preset(info.name)
        rows.append({"preset": info.name, "card": f"{info.vram_gb:g} GB" if info.vram_gb else "no GPU",
                     "model": cfg.model.name, "4bit": cfg.model.load_in_4bit, "vLLM": cfg.model.fast_inference,
                     "description": info.description})
    print(_table(rows, ["preset", "card", "model", "4bit", "vLLM", "description"]))
    _print_preset_catalogs([info.name for info in list_presets()])
    gpu = detect_gpu()
    found = f"{gpu.name} ({gpu.vram_gb:g} GB)" if gpu else "no NVIDIA GPU"
    print(f"\nDetected: {found} -> proposed preset: {propose_preset(gpu)}")
    return 0


def _print_preset_catalogs(presets: list[str]) -> None:
    """Each preset's model catalog, its default model first, with the reason for each choice."""
    from .catalog import catalog_for_preset

    for preset in presets:
        print(f"\nModels for {preset}:\n" + text_table(catalog_for_preset(preset), indent="  "))


def _resolve(args: argparse.Namespace):
    from .hardware import detect_gpu
    from .presets import propose_preset, resolve_config

    overrides = list(args.set or [])
    if getattr(args, "model", None):
        overrides.append(f"model.name={args.model}")
    if args.preset in (None, "auto"):
        args.preset = propose_preset(detect_gpu())
    return resolve_config(args.preset, args.config, overrides)


@command("estimate")
def cmd_estimate(args: argparse.Namespace) -> int:
    """Against --vram, else the detected GPU, else the preset's card; the output says which."""
    from .memory import choose_card, estimate_report, format_estimate

    config = _resolve(args)
    report = estimate_report(config, card=choose_card(config, args.vram))
    _print_json(report) if args.json else print(format_estimate(report))
    return 0


# -- training -------------------------------------------------------------------------------------
def _check_fits(config: Any, force: bool) -> bool:
    """memory.preflight on this machine's GPU (or RAM): print the estimate; False when it refuses the run."""
    from .memory import format_estimate, preflight

    result = preflight(config, force=force)
    if result.card.vram_gb is None and result.proceed:  # no GPU: the RAM verdict, the time per step, a GPU warning
        print(result.message, file=sys.stderr if result.warning else sys.stdout, flush=True)
        return True
    if result.report:
        print(format_estimate(result.report))
    if not result.proceed:
        print(f"\nRefusing to start: {result.message}\nPass --force to try anyway.", file=sys.stderr)
        return False
    print(f"\n{result.message}", file=sys.stderr if result.verdict != "fits" else sys.stdout, flush=True)
    return True


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    """Training runs in a child process (job.py) with its output here, as the app will run it."""
    from . import job
    from .train import start_run

    config = _resolve(args)
    if not _check_fits(config, args.force):
        return 2
    job.check_machine_free()  # before a run folder is made for a start that cannot happen
    run = start_run(config)
    print(f"Run directory: {run.path}", flush=True)
    try:
        return job.run_attached(run)
    except job.JobBusy:
        run.discard_untrained()  # another job took the machine in between: no empty run left behind
        raise


@command("resume")
def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a stopped or failed run; `--steps N` trains N steps past where it is (also after it finished)."""
    from . import job
    from .runs import open_run

    run = open_run(args.run_dir)
    for note in job.prepare_resume(run, args.steps):
        print(note, file=sys.stderr)
    return job.run_attached(run, resume=True)


@command("worker")
def cmd_worker(args: argparse.Namespace) -> int:
    from .runs import open_run

    run = open_run(args.run_dir)
    if not args.resume and run.has_history():  # a fresh start here would train over the run's steps
        raise UserError(f"{run.path.name} has already been trained (to step {run.status().get('step', 0)}); "
                        f"continue it with `python -m grpo_box resume {run.path}`, or start a new run with "
                        "`python -m grpo_box train`")
    from .train import run_training  # after the check: it loads the training stack

    return _finish(run_training(run, resume=args.resume, parent_pid=args.parent_pid))


def _finish(run: Any) -> int:
    from .runs import RETRYING

    status = run.status()
    print(f"\n{status['state']}: step {status.get('step')}/{status.get('max_steps')}  ({run.path})")
    if status.get("error"):
        print(f"error: {status['error']}", file=sys.stderr)
    if status.get("evaluation_error"):  # finished and saved; only the held-out evaluation failed
        print(f"evaluation: {status['evaluation_error']}", file=sys.stderr)
    return 0 if status["state"] in ("finished", "stopped", RETRYING) else 1


@command("stop")
def cmd_stop(args: argparse.Namespace) -> int:
    from . import job
    from .runs import open_run

    run = open_run(args.run_dir)
    if not job.worker_alive(run):
        print(f"{run.path.name} is not training (state: {run.status().get('state')}); nothing to stop")
        return 0
    job.request_stop(run)
    print("Stop requested: the run saves a checkpoint at the end of its current step.")
    return 0


@command("runs")
def cmd_runs(args: argparse.Namespace) -> int:
    from .runs import list_runs

    rows = list_runs(args.root)
    if args.json:
        _print_json(rows)
    else:
        print(_table(rows, ["name", "state", "step", "max_steps", "reward", "path"]) if rows else "no runs yet")
    return 0


# -- data and rewards -----------------------------------------------------------------------------
@command("rewards")
def cmd_rewards(args: argparse.Namespace) -> int:
    from .rewards import format_report, list_rewards, score_file

    if args.action == "list":
        rows = [{"name": r["name"], "params": ", ".join(f"{k}={v!r}" for k, v in r["params"].items()),
                 "description": r["description"]} for r in list_rewards()]
        _print_json(list_rewards()) if args.json else print(_table(rows, ["name", "description", "params"]))
        return 0
    if args.action == "check":
        return _check_reward_file(args)
    if bool(args.data) == bool(args.sample):
        print("rewards score needs either --data FILE.jsonl (your completions) or --sample N (the base model's)",
              file=sys.stderr)
        return 2
    if args.data:
        if not args.rubric:
            print("rewards score --data needs --rubric RUBRIC.yaml", file=sys.stderr)
            return 2
        timeout = _resolve(args).reward_timeout if (args.config or args.set) else None  # None: the default
        report = score_file(args.rubric, args.data, user_file=args.user_file, template=args.template,
                            **({} if timeout is None else {"timeout": timeout}))
    else:
        report = _sample_dry_run(args)
    _print_json(report.to_dict()) if args.json else print(format_report(report))
    return 0


def _check_reward_file(args: argparse.Namespace) -> int:
    """`rewards check FILE`: load a user reward file (syntax, signatures) and try each function on an example."""
    from .config import USER_PREFIX
    from .rewards.filecheck import check_reward_file

    if not args.file:
        print("rewards check needs the reward file: python -m grpo_box rewards check FILE.py", file=sys.stderr)
        return 2
    result = check_reward_file(args.file)
    if args.json:
        _print_json(result)
        return 0
    for row in result["functions"]:
        outcome = f"problem: {row['problem']}" if row["problem"] else f"example scores {row['scores']}"
        print(f"{USER_PREFIX}{row['name']}: {outcome}")
    return 0 if result["ok"] else 1


def _sample_dry_run(args: argparse.Namespace):
    """`rewards score --sample N`: the config's rubric (or --rubric) on the base model's samples."""
    from .evaluate import sample_dry_run
    from .rewards.dryrun import load_rubric

    config = _resolve(args)
    if args.rubric:
        config.rewards = load_rubric(args.rubric)
    if args.user_file:
        config.reward_file = args.user_file
    g = config.grpo
    print(f"sampling {g.num_generations} completions for each of {args.sample} prompts from {config.model.name} "
          f"(up to {g.max_completion_length} tokens, temperature {g.temperature:g})", file=sys.stderr)
    return sample_dry_run(config, args.sample, progress=_rows_progress)


def _rows_progress(done: int, total: int, what: str) -> None:
    """Generation progress on stderr, so that --json output stays clean."""
    print(f"  {what}: {done}/{total} prompts", file=sys.stderr, flush=True)


@command("preview")
def cmd_preview(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from .data import preview
    from .models import resolve_model

    config = _resolve(args)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model.name))
    rows = preview(config, tokenizer, n=args.n)
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        print(f"--- {row['origin']}: {row['tokens']} tokens, reference answer: {row['answer']}\n{row['text']}")
    return 0


# -- evaluation, chat, export ---------------------------------------------------------------------
@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    """`eval RUN_DIR` uses the run's own config and eval.json; `eval --model ID [--adapter DIR]`
    a preset/config (+ --set) and `--out FILE`. `--limit N` scores the first N held-out rows."""
    from .evaluate import evaluate_model, evaluate_run, format_eval

    def show(result: dict[str, Any]) -> None:  # before writing: a failed write must not lose the scores
        _print_json(result) if args.json else print(format_eval(result), flush=True)

    options = {"k": args.k, "limit": args.limit, "progress": _rows_progress, "show": show}
    if args.run_dir:
        given = [flag for flag, value in (("--preset", args.preset), ("--config", args.config), ("--set", args.set),
                                          ("--model", args.model), ("--adapter", args.adapter), ("--out", args.out))
                 if value]
        if given:
            print(f"error: eval RUN_DIR scores the run's own model, adapter and config and writes RUN_DIR/eval.json; "
                  f"{', '.join(given)} would be ignored. Drop {'it' if len(given) == 1 else 'them'}, or evaluate "
                  "outside the run with `eval --model ID [--adapter DIR] [--set KEY=VALUE] [--out FILE]`",
                  file=sys.stderr)
            return 2
        evaluate_run(args.run_dir, base=not args.trained_only, trained=True, **options)
        out = Path(args.run_dir) / "eval.json"
    else:
        out = Path(args.out or "eval.json")
        evaluate_model(_resolve(args), args.adapter, out, base=not args.trained_only, **options)
    print(f"wrote {out}", file=sys.stderr)
    return 0


@command("chat")
def cmd_chat(args: argparse.Namespace) -> int:
    """Stream replies with the reasoning and the answer labelled apart; `--compare` asks base and
    trained model the same prompt; `--base` keeps the run's system prompt for the untrained model."""
    from .runs import CONFIG

    if (args.base or args.compare) and not (Path(args.source) / CONFIG).is_file():
        print(f"error: --{'base' if args.base else 'compare'} needs a run directory (its config names the base model); "
              f"{args.source} is not one", file=sys.stderr)
        return 2
    history: list[dict[str, str]] = []
    while True:
        text = args.prompt if args.prompt else _ask()
        if text is None:
            return 0
        if args.compare:
            _chat_compare(args, text)
        else:
            history.append({"role": "user", "content": text})
            history.append({"role": "assistant", "content": _chat_turn(args, history)})
        if args.prompt:
            return 0


def _chat_turn(args: argparse.Namespace, history: list[dict[str, str]]) -> str:
    from .chat import CHAT_SAMPLING, SectionStream, chat_stream, sampling_with

    sections = SectionStream()
    reply = ""
    sampling = sampling_with(CHAT_SAMPLING, args.temperature, args.top_p, args.max_tokens)
    for chunk in chat_stream(args.source, history, system_prompt=args.system, sampling=sampling, base=args.base):
        print(sections.feed(chunk), end="", flush=True)
        reply = chunk.text
    print()
    return reply


def _chat_compare(args: argparse.Namespace, prompt: str) -> None:
    from .chat import COMPARE_SAMPLING, format_sections, resolve_source, sampling_with, side_by_side, split_think_answer

    template = resolve_source(args.source).template
    sampling = sampling_with(COMPARE_SAMPLING, args.temperature, args.top_p, args.max_tokens)
    replies = side_by_side(args.source, prompt, system_prompt=args.system, sampling=sampling)
    for name, reply in zip(("base model", "trained model"), replies):
        print(f"=== {name} ===\n{format_sections(*split_think_answer(reply, template))}\n", flush=True)


def _ask() -> str | None:
    try:
        text = input("\nyou> ").strip()
    except EOFError:
        return None
    return text or None


@command("merge")
def cmd_merge(args: argparse.Namespace) -> int:
    """Merge, then print the parity check; exit 1 when the merged model answers unlike base + adapter."""
    from .merge import merge_with_report

    with _writing("merge"):
        report = merge_with_report(args.run_dir, progress=_progress, allow_4bit_merge=args.allow_4bit_merge,
                                   download_base=args.download_base)
    verdict = "match" if report.ok else "DIFFER"
    print(f"Merged model: {report.merged_dir}\n"
          f"Check: {report.matches}/{len(report.prompts)} greedy replies of the merged model match base + adapter "
          f"({verdict}); the adapter changes {report.changed_vs_base} of them vs the base")
    for note in report.warnings:
        print(f"note: {note}")
    return 0 if report.ok else 1


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    """Exit 1 when a check failed (the table or JSON says which); files written are kept."""
    from .export import export_run

    quants = [q.strip() for q in args.quant.split(",") if q.strip()]
    with _writing("export"):
        report = export_run(args.run_dir, quants=quants, lora=args.lora, progress=None if args.json else _progress,
                            allow_4bit_merge=args.allow_4bit_merge, download_base=args.download_base)
    _print_json(report.to_dict()) if args.json else print(report.format_table())
    return 0 if report.ok else 1


class _WriteFailed(UserError):
    """Writing an output failed (a full disk, no permission); earlier outputs are left as they were."""


@contextlib.contextmanager
def _writing(what: str) -> Iterator[None]:
    """Turn an OSError while writing (a full disk) into a one-line error instead of a traceback."""
    try:
        yield
    except FileNotFoundError:
        raise  # a missing input, not a failed write: main() prints it when it is a UserError (NotARunError)
    except OSError as exc:
        raise _WriteFailed(f"{what} failed while writing: {exc}. Free disk space (or fix the permissions) and run it "
                           f"again; earlier {what} outputs were left as they were") from None


@command("push")
def cmd_push(args: argparse.Namespace) -> int:
    """Upload a run's GGUF, merged model or adapter to the Hub; the token comes from HF_TOKEN or a
    hidden prompt, never from the command line (which shell history and `ps` would keep)."""
    from .hub import push_to_hub

    path = _push_source(args.run_dir, args.what, args.quant)
    token = os.environ.get("HF_TOKEN") or _ask_token()
    url = push_to_hub(path, args.repo, token, private=not args.public, progress=_progress)
    print(f"Uploaded {path.name} to {url}")
    return 0


def _push_source(run_dir: str, what: str, quant: str | None) -> Path:
    from .export import find_gguf
    from .inference import run_adapter_dir
    from .merge import default_merged_dir
    from .runs import open_run

    run = open_run(run_dir)
    if what == "gguf":
        return find_gguf(run.path, quant)
    if what == "merged":
        merged = default_merged_dir(run)
        if not (merged / "config.json").is_file():
            raise UserError(f"run {run.path.name} has no merged model yet: run `python -m grpo_box merge {run_dir}`")
        return merged
    adapter = run_adapter_dir(run)
    if adapter is None:
        raise UserError(f"run {run.path.name} has no trained adapter yet; train it first")
    return adapter


def _ask_token() -> str:
    import getpass

    if not sys.stdin.isatty():
        raise UserError("no Hugging Face token: set HF_TOKEN in the environment (it is never stored or logged)")
    token = getpass.getpass("Hugging Face token with write access (input hidden): ").strip()
    if not token:
        raise UserError("no token given; nothing was uploaded")
    return token


@command("cluster")
def cmd_cluster(args: argparse.Namespace) -> int:
    """Write a multi-GPU job bundle for plain TRL + accelerate + a vLLM server (cluster.py)."""
    from .cluster import build_bundle

    bundle = build_bundle(args.source, args.gpus, nodes=args.nodes, backend=args.backend,
                          vllm_gpus=args.vllm_gpus, out=args.out)
    print(bundle.summary())
    return 0


@command("import-adapter")
def cmd_import_adapter(args: argparse.Namespace) -> int:
    """A cluster job's output folder becomes a run directory (cluster_import.py)."""
    from .cluster_import import import_adapter

    run = import_adapter(args.dir, name=args.name)
    print(f"Run directory: {run.path}\nNext: python -m grpo_box chat {run.path}  |  eval {run.path}  |  "
          f"export {run.path}")
    return 0


@command("serve")
def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve_forever

    serve_forever(args.gguf, args.host, args.port, None)
    return 0


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    """The headless demo: train the cpu preset on the offline task, evaluate, export to GGUF."""
    from . import job
    from .train import start_run

    config = _resolve(args)
    config.evaluate = True
    if not _check_fits(config, args.force):
        return 2
    run = start_run(config)
    print(f"[1/2] Training {config.model.name} on {config.data.source} for {config.grpo.max_steps} steps -> {run.path}",
          flush=True)
    code = job.run_attached(run)
    if code or run.status().get("state") != "finished":
        return code or 1
    from .evaluate import format_eval

    print(format_eval(json.loads(run.file("eval.json").read_text())))
    from .export import DEFAULT_QUANTS, export_run

    print(f"[2/2] Exporting to GGUF ({', '.join(DEFAULT_QUANTS)}) with an Ollama Modelfile")
    report = export_run(run.path, quants=DEFAULT_QUANTS, progress=_progress)
    print(report.format_table())
    gguf = next((f.path for f in report.files if f.quant == "q4_k_m"), report.files[0].path)
    print(f"\nNext:\n  python -m grpo_box chat {run.path}            talk to the trained model\n"
          f"  python -m grpo_box serve {gguf}   OpenAI-compatible server for Open WebUI")
    return 0 if report.ok else 1


def _progress(message: str, fraction: float | None = None) -> None:
    pct = f"{fraction * 100:5.1f}% " if fraction is not None else ""
    print(f"  {pct}{message}", flush=True)


# -- parser ---------------------------------------------------------------------------------------
def _config_args(p: argparse.ArgumentParser, preset_default: str | None = "auto") -> None:
    p.add_argument("--preset", default=preset_default,
                   help=f"{_preset_list()} (see `presets`); default: the one proposed for this machine")
    p.add_argument("--config", help="a YAML file applied on top of the preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. grpo.max_steps=10")
    p.add_argument("--model", help="model: bundled:…, a Hub id or a local HF directory")


@functools.cache
def _preset_list() -> str:
    from .presets import preset_names

    return ", ".join(preset_names())


def _base_args(p: argparse.ArgumentParser) -> None:
    """Where merge finds the 16-bit base (merge and export)."""
    p.add_argument("--download-base", action="store_true",
                   help="download the 16-bit base from the Hub when it is not on disk")
    p.add_argument("--allow-4bit-merge", action="store_true",
                   help="without the 16-bit base, merge into the dequantized 4-bit base (lower quality; warned)")


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` above 0 (argparse reports anything else as a usage error)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not value > 0:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} must be more than 0")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from .export import DEFAULT_QUANTS
    from .prompts import PREVIEW_ROWS, TEMPLATES

    parser = argparse.ArgumentParser(prog="python -m grpo_box", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("presets", help="list presets and the one proposed for this machine")
    p = sub.add_parser("estimate", help="VRAM estimate for a preset/config")
    _config_args(p)
    p.add_argument("--vram", type=_positive(float), help="card size in GB (default: the detected GPU, else the preset's card)")
    p.add_argument("--json", action="store_true")
    for name in ("train", "demo"):
        p = sub.add_parser(name, help="train a run" if name == "train" else "train, evaluate and export (headless demo)")
        _config_args(p, preset_default="auto" if name == "train" else "cpu")  # the demo is the offline cpu one
        p.add_argument("--force", action="store_true", help="start even if the estimate says it will not fit")
    p = sub.add_parser("resume", help="continue a run from its last checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, metavar="N", help="train N more steps (raises max_steps; needed once finished)")
    p = sub.add_parser("worker", help=argparse.SUPPRESS)
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    p = sub.add_parser("stop", help="ask a running run to checkpoint and stop")
    p.add_argument("run_dir")
    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--root")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("rewards", help="list rewards or score completions with a rubric (dry run)")
    p.add_argument("action", choices=["list", "score", "check"])
    p.add_argument("file", nargs="?", help="with check: your reward file (loaded, then each function tried on an example)")
    p.add_argument("--rubric", help="rubric YAML (with --sample: replaces the config's rewards)")
    p.add_argument("--data", help="JSONL of prompts with completions to score")
    p.add_argument("--sample", type=int, metavar="N", help="score completions sampled from the base model on N prompts")
    p.add_argument("--user-file", help="Python file with your reward functions")
    p.add_argument("--template", choices=list(TEMPLATES),
                   help="with --data: fill the rubric's unset tag params from this data template, as training does")
    _config_args(p)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("preview", help="the first prompts exactly as the model sees them")
    _config_args(p)
    p.add_argument("-n", type=_positive(int), default=PREVIEW_ROWS, help=f"how many prompts (default {PREVIEW_ROWS})")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("eval", help="score the held-out split (base and trained); writes eval.json")
    p.add_argument("run_dir", nargs="?", help="a run directory (its config, adapter and eval.json)")
    _config_args(p, preset_default=None)  # None: tell a --preset given with RUN_DIR from the default (proposed)
    p.add_argument("--adapter", help="without RUN_DIR: a LoRA adapter folder to evaluate on top of --model")
    p.add_argument("--out", help="without RUN_DIR: where to write the results (default: ./eval.json)")
    p.add_argument("--k", type=int, default=1, help="pass@k samples (1 = greedy only)")
    p.add_argument("--limit", type=int, help="score only the first N held-out rows (the split stays the same)")
    p.add_argument("--trained-only", action="store_true", help="skip the base model")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("chat", help="chat with a run, a merged model or a GGUF")
    p.add_argument("source", help="a run directory, a merged model directory or a .gguf file")
    p.add_argument("--prompt", help="ask this one prompt and exit (default: interactive)")
    p.add_argument("--base", action="store_true", help="talk to the run's base model (with the run's system prompt)")
    p.add_argument("--compare", action="store_true", help="the same prompt to the base and the trained model")
    p.add_argument("--system", help="system prompt instead of the run's ('' sends none)")
    from .chat import CHAT_SAMPLING, COMPARE_SAMPLING

    p.add_argument("--temperature", type=float, help=f"default {CHAT_SAMPLING.temperature:g}; "
                                                     f"{COMPARE_SAMPLING.temperature:g} (greedy) with --compare")
    p.add_argument("--top-p", type=float, default=CHAT_SAMPLING.top_p)
    p.add_argument("--max-tokens", type=int, default=CHAT_SAMPLING.max_new_tokens)
    p = sub.add_parser("merge", help="merge the LoRA into a 16-bit model")
    p.add_argument("run_dir")
    _base_args(p)
    p = sub.add_parser("export", help="export GGUF files (+ Ollama Modelfile)")
    p.add_argument("run_dir")
    p.add_argument("--quant", default=",".join(DEFAULT_QUANTS), help="comma-separated GGUF types (default %(default)s)")
    p.add_argument("--lora", action="store_true", help="also export the adapter alone as a GGUF LoRA")
    p.add_argument("--json", action="store_true")
    _base_args(p)
    p = sub.add_parser("push", help="upload a GGUF, the merged model or the adapter to the Hugging Face Hub")
    p.add_argument("run_dir")
    p.add_argument("--repo", required=True, help="USER/NAME of the Hub model repo (created if missing)")
    p.add_argument("--what", choices=["gguf", "merged", "adapter"], default="gguf")
    p.add_argument("--quant", help="which GGUF (default: the smallest quantized one)")
    p.add_argument("--public", action="store_true", help="make a new repo public (default: private)")
    from . import cluster_plan as plan  # light: the options' defaults and help, shared with the app's panel

    p = sub.add_parser("cluster", help="write a multi-GPU job (TRL + accelerate + vLLM server) for a run or config")
    p.add_argument("source", metavar="RUN_DIR_OR_CONFIG")
    p.add_argument("--gpus", type=_positive(int), required=True, help=plan.OPTION_HELP["gpus"])
    p.add_argument("--nodes", type=_positive(int), default=plan.DEFAULT_NODES, help=plan.OPTION_HELP["nodes"])
    p.add_argument("--backend", choices=plan.BACKENDS, default=plan.DEFAULT_BACKEND, help=plan.OPTION_HELP["backend"])
    p.add_argument("--vllm-gpus", type=int, help=plan.OPTION_HELP["vllm_gpus"])
    p.add_argument("--out", help=plan.OPTION_HELP["out"])
    p = sub.add_parser("import-adapter", help="turn a cluster job's output folder into a run directory")
    p.add_argument("dir", help="the job's output folder (adapter/, run_config.yaml, metrics.jsonl)")
    p.add_argument("--name", help="run name (default: <run>-cluster)")
    p = sub.add_parser("serve", help="OpenAI-compatible server on a GGUF (for Open WebUI)")
    p.add_argument("gguf")
    from .serve import DEFAULT_HOST, DEFAULT_PORT  # light: the server starts as a subprocess

    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    return parser


def _runs_user_code(args: argparse.Namespace) -> bool:
    """Commands that call user reward code in this process (the rest run it in a training worker)."""
    return args.command == "eval" or (args.command == "rewards" and args.action != "list")


def main(argv: list[str] | None = None) -> int:
    """Run one command. Only UserError (whatever a user can fix) is printed as one line; anything
    else is a bug and keeps its traceback. Commands that run user reward code run in a guarded
    child (rewards.guard), so a reward calling os._exit() cannot end them silently with status 0."""
    from .models import quiet_library_logs, use_data_home_for_caches
    from .rewards import guard

    args = build_parser().parse_args(argv)
    quiet_library_logs()  # torchao's optional-kernel and torch's pytree warnings read like errors to users
    use_data_home_for_caches()  # Unsloth's compiled cache under the data home, not ./unsloth_compiled_cache
    if _runs_user_code(args) and not guard.in_guarded_child():
        return guard.run_guarded(sys.argv[1:] if argv is None else list(argv), f"`{args.command}`")
    try:
        code = COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    guard.mark_done(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
