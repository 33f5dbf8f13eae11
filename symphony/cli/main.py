"""The `symphony` command line. Thin: every command calls into the library."""
from __future__ import annotations

import json
import math
import os
import sys

import click

from symphony.cli.evals import SUITES
from symphony.cli.options import checkpoint_option, config_options
from symphony.errors import SymphonyError
from symphony.io import ensure_writable_dir
from symphony.pipeline.phases import PHASES, get_phase, phase_summary, phase_table

MIN_DEMO_LENGTH = 256  # room for the planted facts and some document around them


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


class SymphonyGroup(click.Group):
    """Turns SymphonyError (bad input, missing artifact) into one clear line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SymphonyError as e:
            if os.environ.get("RANK", "0") == "0":  # under `accelerate launch` every process fails alike: say it once
                click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; finished work was saved", err=True)
            sys.exit(130)


@click.group(cls=SymphonyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="symphony")
def main():
    """Symphony: run Hugging Face causal LMs over inputs far longer than their context window,
    at constant memory, with exact recall of the facts that matter.

    \b
    Start with:  symphony info            (what model, how much memory per token)
                 symphony run-phase 1     (freeze the base model, calibrate)
    """
    _quiet_libraries()


@main.command()
@config_options
def info(cfg):
    """Print the resolved config, model size, context window, KV bytes per token and artifact paths."""
    import yaml

    from symphony.report import model_facts

    facts = model_facts(cfg)
    click.echo("# resolved config")
    click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    click.echo("\n# model")
    for key, value in facts.items():
        click.echo(f"{key:>22}: {value}")


@main.command("run-phase", help="Run training phase PHASE (1-7) into --run-dir.\n\n\b\n" + phase_table())
@click.argument("phase", type=int)
@config_options
@click.option("--run-dir", "-r", default="runs/default", show_default=True, help="Where phase artifacts go.")
@click.option("--force", is_flag=True, help="Redo the phase even if its artifact is up to date.")
def run_phase(phase, cfg, run_dir, force):
    ensure_writable_dir(run_dir, what="--run-dir")
    _run_one_phase(phase, cfg, run_dir, force)


def _run_one_phase(phase, cfg, run_dir, force):
    from symphony.pipeline.runs import manifest_path

    result = get_phase(phase)(cfg, run_dir, force=force)
    status = result.get("status", "written")
    click.echo(f"phase {phase} ({result.get('name', '')}): {status} -> {manifest_path(run_dir, phase)}")
    for line in phase_summary(phase, result):
        click.echo(f"  {line}")


@main.command()
@config_options
@click.option("--run-dir", "-r", default="runs/default", show_default=True, help="Where phase artifacts go.")
@click.option("--from", "first", type=click.IntRange(min(PHASES), max(PHASES)), default=min(PHASES), show_default=True,
              help="First phase.")
@click.option("--to", "last", type=click.IntRange(min(PHASES), max(PHASES)), default=max(PHASES), show_default=True,
              help="Last phase.")
@click.option("--force", is_flag=True, help="Redo every phase in the range even if up to date.")
def pipeline(cfg, run_dir, first, last, force):
    """Run phases --from..--to in order into --run-dir (each is skipped when already up to date, and a
    killed training phase resumes from its last checkpoint). The result, RUN_DIR/final, loads with
    `symphony eval ... --checkpoint RUN_DIR` and `symphony chat --checkpoint RUN_DIR`.

    \b
    Example (tiny, seconds):  symphony pipeline -c tiny -r runs/tiny
    """
    import time

    from symphony.pipeline.train import check_pipeline_trains

    if first > last:
        raise SymphonyError(f"--from {first} is after --to {last}")
    ensure_writable_dir(run_dir, what="--run-dir")
    check_pipeline_trains(cfg, run_dir, first, last)
    t0 = time.perf_counter()
    for phase in range(first, last + 1):
        _run_one_phase(phase, cfg, run_dir, force)
    click.echo(f"pipeline {first}-{last} done in {time.perf_counter() - t0:.0f} s -> {run_dir}")


@main.group()
def eval():  # noqa: A001 - the command is called `eval`
    """Evaluation suites: oom, needle, ppl, integrity (baselines in the same run)."""


for _suite in SUITES.values():
    eval.add_command(_suite)


def _status_line(session) -> str:
    from symphony.report import fmt_bytes

    st = session.status()
    paging = ""
    if st.get("page_switches"):  # Titans manifold paging
        paging = " | page switches " + " ".join(f"L{layer}:{n}" for layer, n in sorted(st["page_switches"].items()))
    return (f"[tokens seen {st['tokens_seen']:,} | cache {fmt_bytes(st['cache_bytes'])} ({st['cache_slots']} slots)"
            f" | peak memory {fmt_bytes(st['peak_bytes'])}{paging}]")


def _task_option(fn):
    return click.option("--task-id", type=click.IntRange(min=0), default=0, show_default=True,
                        help="Persistent-memory task whose learned tokens open the cache (a checkpoint trained "
                             "with memory.persistent_tokens > 0 and memory.num_tasks > N).")(fn)


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf (nan passes every comparison)."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number.", param, ctx)
        return value


def _sampling_options(fn):
    fn = click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True,
                      help="Longest reply, in tokens.")(fn)
    fn = click.option("--temperature", type=FiniteFloatRange(min=0.0), default=0.0, show_default=True,
                      help="0 = greedy decoding.")(fn)
    fn = click.option("--top-p", type=FiniteFloatRange(min=0.0, max=1.0, min_open=True), default=1.0,
                      show_default=True, help="Nucleus sampling threshold, in (0, 1].")(fn)
    from symphony.runtime.policies import POLICIES, policies_help

    fn = click.option("--policy", type=click.Choice(list(POLICIES)), default=None,
                      help=f"Cache policy: {policies_help()} (default: cache.policy from the config).")(fn)
    return checkpoint_option(fn)


def _printer():
    """Print tokens as they are generated, decoding incrementally so multi-byte characters come out whole."""
    state = {"ids": [], "shown": 0}

    def on_token(engine_tokenizer, token):
        state["ids"].append(token)
        text = engine_tokenizer.decode(state["ids"], skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            click.echo(text[state["shown"]:], nl=False)
            state["shown"] = len(text)

    return on_token


@main.command()
@config_options
@click.option("--file", "file", required=True, type=click.Path(exists=True, dir_okay=False, allow_dash=True),
              help="Document of any length to stream before the prompt; - reads standard input.")
@click.option("--prompt", "-p", required=True, help="Question or instruction about the document.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (answer, tokens seen, cache bytes and slots, peak memory) instead of text.")
@_sampling_options
@_task_option
def generate(cfg, file, prompt, as_json, max_new_tokens, temperature, top_p, policy, task_id):
    """Stream a document of any length through the bounded cache, then answer PROMPT about it.

    \b
    Example:  symphony generate --file book.txt -p "Who is the narrator's brother?"
              cat *.log | symphony generate --file - -p "Which error comes first?" --json
    """
    from symphony.runtime.chat import ChatSession
    from symphony.runtime.engine import engine_from_config

    if not prompt.strip():
        raise SymphonyError("--prompt is empty; say what to do with the document, e.g. -p \"Summarise it.\"")

    engine = engine_from_config(cfg, policy=policy, progress=not as_json)
    session = ChatSession(engine, task_id=task_id)
    session.preload(file)
    printer = _printer()
    on_token = None if as_json else (lambda t: printer(engine.tokenizer, t))
    answer = session.say(prompt, max_new_tokens, on_token=on_token, temperature=temperature, top_p=top_p)
    if as_json:
        click.echo(json.dumps({"answer": answer, "model": cfg.model.name, "policy": engine.policy,
                               **session.status()}))
        return
    click.echo()
    click.echo(_status_line(session), err=True)


def _utf8(stream):
    """Read a text stream as UTF-8 whatever the locale says (turns are UTF-8 like every file we read)."""
    try:
        stream.reconfigure(encoding="utf-8")
    except (AttributeError, ValueError):  # not a TextIOWrapper, or already read from
        pass
    return stream


@main.command()
@config_options
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False),
              help="Preload this document into the cache (it opens the first user message).")
@click.option("--script", type=click.Path(exists=True, dir_okay=False),
              help="Read the user's turns from this file, one per line, instead of the keyboard.")
@_sampling_options
@_task_option
def chat(cfg, file, script, max_new_tokens, temperature, top_p, policy, task_id):
    """Constant-memory chat: every turn streams through the same bounded cache, so a conversation
    can go on forever. Reads turns from the keyboard, from piped stdin, or from --script.
    Type /exit to leave. After each turn a status line shows tokens seen, cache size and peak memory."""
    from symphony.runtime.chat import ChatSession
    from symphony.runtime.engine import engine_from_config

    engine = engine_from_config(cfg, policy=policy, progress=True)
    session = ChatSession(engine, task_id=task_id)
    if file:
        session.preload(file)
    interactive = script is None and sys.stdin.isatty()
    lines = open(script, encoding="utf-8") if script else _utf8(sys.stdin)
    source = script or "standard input"
    if interactive:
        click.echo(f"symphony chat ({cfg.model.name}, policy {engine.policy}); /exit to leave")
    try:
        while True:
            if interactive:
                click.echo("you> ", nl=False)
            try:
                line = lines.readline()
            except UnicodeDecodeError as e:
                raise SymphonyError(f"{source} is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r}); "
                                    "convert it, e.g. iconv -f latin1 -t utf-8") from None
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if not interactive:
                click.echo(f"you> {text}")
            click.echo("assistant> ", nl=False)
            printer = _printer()
            session.say(text, max_new_tokens, on_token=lambda t: printer(engine.tokenizer, t),
                        temperature=temperature, top_p=top_p)
            click.echo()
            click.echo(_status_line(session))
    finally:
        if script:
            lines.close()


@main.command()
@config_options
@click.option("--length", type=click.IntRange(min=MIN_DEMO_LENGTH), default=None,
              help=f"Document length in tokens, at least {MIN_DEMO_LENGTH} (default: 1.5x the context window).")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(cfg, length, seed):
    """The main job: plant facts in a document 1.5x longer than the model's context window, stream it at
    constant memory, ask for each fact, and compare with the StreamingLLM (sinks) baseline."""
    from symphony.cli.demo import run_demo

    run_demo(cfg, length=length, seed=seed)


@main.command()
@config_options
@click.option("--vram", default="8GB", show_default=True, metavar="SIZE",
              help="GPU memory to plan for, e.g. 8GB, 7.5GiB, 24GB (GB means GiB).")
@click.option("--model-config", "model_config", type=click.Path(exists=True), default=None, metavar="PATH",
              help="Plan for this model instead: a config.json file or a directory holding one (offline).")
@click.option("--segment-len", type=click.IntRange(min=1), default=None,
              help="Tokens per prefill forward (default: cache.segment_len of the config).")
def plan(cfg, vram, model_config, segment_len):
    """Plan the VRAM budget: weights, activations, overhead and how many cache slots fit in --vram.

    \b
    Reads only the model's config (no weights); prints the budget table, a ready-to-paste
    --set line for the sinks/ledger/window split, and whether the configured cache fits.
    Example:  symphony plan --config qwen2.5-7b-8gb --vram 8GB --model-config ./Qwen2.5-7B-Instruct
    """
    from symphony.planner import plan_for, render_plan

    for line in render_plan(plan_for(cfg, vram, model_config=model_config, segment_len=segment_len)):
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    main()
