"""llama.cpp control vector: does a bundle's `control_vector.gguf` steer a real llama.cpp the way
the tool says it does?

Builds llama.cpp's `llama-completion` from the sources vendored in the `llama-cpp-python` sdist
(PyPI only; cached under `<cache>/llama.cpp/<version>/`, so only the first run compiles), then
runs the bundle's held-out test prompts (rendered with the chat template exactly as the tool
renders them, passed raw: no llama.cpp-side templating, no BOS added) greedily on the GGUF the
bundle was made from: without a control vector, with it at scale 0 and at scale 1. Each
continuation is scored with the task's scorer and compared with the tool's own transformers
generation (unsteered, the bundle's positions, and `positions: all`, which is what llama.cpp
does: it adds the direction at every position).

    python -m bench.llama_cpp [--quick] [--bundle outputs/demo/bundle] [--llama-bin PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import REPO, machine_line, publish

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist whose vendored llama.cpp is built (pinned: reproducible)
TARGET = "llama-completion"
DEFAULT_BUNDLE = REPO / "outputs" / "demo" / "bundle"
QUICK_PROMPTS = 6
BUILD_TIMEOUT_S = 3600
RUN_TIMEOUT_S = 300
JOBS = 2


class SetupError(RuntimeError):
    """Something this benchmark needs is missing (bundle, control vector, GGUF, build)."""


@dataclass
class LlamaBuild:
    """A built `llama-completion` and what is known about its version."""

    binary: Path
    sdist_version: str
    version_text: str  # what `llama-completion --version` prints
    changelog_commit: str  # llama-cpp-python's CHANGELOG: "update llama.cpp to ...@<sha>"
    commands: list[str] = field(default_factory=list)
    build_seconds: float | None = None
    cached: bool = False


@dataclass
class Generated:
    """One configuration's continuations of every prompt and their scores."""

    texts: list[str]
    scores: list[float]
    prompt_tokens: list[list[int]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return sum(self.scores) / len(self.scores)


def _run(
    cmd: list[str], timeout: float, cwd: Path | None = None, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; on failure raise with the tail of its output."""
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def build_dir(version: str) -> Path:
    """Where the sdist, its sources and the build of one llama-cpp-python version live."""
    from hpo.core.paths import cache_dir

    return cache_dir() / "llama.cpp" / version


def _changelog_commit(src: Path, version: str) -> str:
    """The llama.cpp commit llama-cpp-python's CHANGELOG names for `version` ("" if none)."""
    changelog = src / "CHANGELOG.md"
    if not changelog.is_file():
        return ""
    section = changelog.read_text().split(f"## [{version}]", 1)[-1].split("\n## [", 1)[0]
    found = re.search(r"llama\.cpp@([0-9a-f]{7,40})", section)
    return found.group(1) if found else ""


def _version_text(binary: Path) -> str:
    proc = _run([str(binary), "--version"], timeout=60)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return "; ".join(line.strip() for line in lines if line.strip())


def ensure_llama(version: str = LLAMA_CPP_PYTHON, binary: Path | None = None) -> LlamaBuild:
    """`llama-completion`, built once from the llama-cpp-python `version` sdist (or `binary`).

    Steps when not cached: `pip download --no-binary :all: --no-deps`, extract, configure with
    cmake (CPU, native, static, no curl/tests/examples/server), build only `llama-completion`
    with `-j2` under `nice -n 10`. The commands and seconds go to `build-info.json` beside it.
    """
    root = build_dir(version)
    src = root / "src" / f"llama_cpp_python-{version}"
    if binary is not None:
        return LlamaBuild(binary, "(given)", _version_text(binary), "", cached=True)
    info_file = root / "build-info.json"
    exe = root / "build" / "bin" / TARGET
    if exe.is_file() and info_file.is_file():
        info = json.loads(info_file.read_text())
        return LlamaBuild(
            exe,
            version,
            _version_text(exe),
            _changelog_commit(src, version),
            info["commands"],
            info["build_seconds"],
            cached=True,
        )
    root.mkdir(parents=True, exist_ok=True)
    log = root / "build.log"
    log.write_text("")
    started = time.perf_counter()
    download = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        f"llama-cpp-python=={version}",
        "-d",
        str(root / "sdist"),
    ]
    print(f"llama.cpp: downloading the llama-cpp-python {version} sdist ...", flush=True)
    _run(download, timeout=900, log=log)
    sdist = root / "sdist" / f"llama_cpp_python-{version}.tar.gz"
    shutil.rmtree(root / "src", ignore_errors=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(root / "src", filter="data")
    llama_src = src / "vendor" / "llama.cpp"
    out = root / "build"
    shutil.rmtree(out, ignore_errors=True)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = [
        "cmake",
        "-S",
        str(llama_src),
        "-B",
        str(out),
        *generator,
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=ON",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_BUILD_UI=OFF",
    ]
    build = ["nice", "-n", "10", "cmake", "--build", str(out), "--target", TARGET, "-j", str(JOBS)]
    print(f"llama.cpp: configuring and building {TARGET} (-j{JOBS}, minutes) ...", flush=True)
    _run(configure, timeout=600, log=log)
    built = time.perf_counter()
    _run(build, timeout=BUILD_TIMEOUT_S, log=log)
    if not exe.is_file():
        raise SetupError(f"the build finished but {exe} is missing (see {log})")
    seconds = {
        "total": round(time.perf_counter() - started, 1),
        "compile": round(time.perf_counter() - built, 1),
    }
    commands = [
        " ".join(download),
        f"tar xzf {sdist.name} (tarfile, filter='data')",
        " ".join(configure),
        " ".join(build),
    ]
    info_file.write_text(
        json.dumps(
            {"commands": commands, "build_seconds": seconds["compile"], **seconds}, indent=2
        )
    )
    return LlamaBuild(
        exe,
        version,
        _version_text(exe),
        _changelog_commit(src, version),
        commands,
        seconds["compile"],
    )


def gguf_path(meta: dict[str, Any]) -> Path:
    """The GGUF file the bundle's base model was converted from (`pkg://` resolved)."""
    from hpo.core.paths import resolve_source

    model = meta["model"]
    if not model.get("gguf_file"):
        raise SetupError(f"the bundle's model {model['name_or_path']!r} is not a GGUF file")
    return resolve_source(model["name_or_path"].rstrip("/") + "/" + model["gguf_file"])


def task_config(bundle_path: Path) -> Any:
    """The task the bundle was made on, from its `config.yaml`."""
    import yaml
    from omegaconf import OmegaConf

    from hpo import TaskConfig

    pinned = yaml.safe_load((bundle_path / "config.yaml").read_text())
    merged = OmegaConf.merge(OmegaConf.structured(TaskConfig), pinned["task"])
    task = OmegaConf.to_object(merged)
    assert isinstance(task, TaskConfig)
    return task


def syntax_probe(build: LlamaBuild, model: Path, cvec: Path, runtime: list[str]) -> dict[str, str]:
    """Which control-vector spellings this llama.cpp accepts: form -> "accepted" or its error.

    Each form generates one token from a one-word prompt; `--help` gives the documented form.
    """
    forms = {
        "--control-vector FILE": ["--control-vector", str(cvec)],
        "--control-vector-scaled FILE:1.0": ["--control-vector-scaled", f"{cvec}:1.0"],
        "--control-vector-scaled FILE 1.0": ["--control-vector-scaled", str(cvec), "1.0"],
    }
    out: dict[str, str] = {}
    for form, args in forms.items():
        cmd = [str(build.binary), "-m", str(model), "-p", "Hello", "-n", "1", "-no-cnv"]
        proc = subprocess.run(
            [*cmd, "--no-warmup", "-c", "64", *runtime, *args],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        errors = [
            line.strip()
            for line in proc.stderr.splitlines()
            if "error" in line.lower() or "format" in line.lower() or "invalid" in line.lower()
        ]
        out[form] = "accepted" if proc.returncode == 0 else (errors[:1] or ["rejected"])[0]
    helptext = _run([str(build.binary), "--help"], timeout=60).stdout
    usage = [line.strip() for line in helptext.splitlines() if "--control-vector" in line]
    out["--help"] = " / ".join(" ".join(u.split()) for u in usage)
    return out


_VERBOSE_TOKEN = re.compile(r"^[\d.]+ I +(\d+) -> '", re.M)  # "0.00.418.341 I      1 -> '...'"


def _has_amx() -> bool:
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def runtime_flags(build: LlamaBuild, model: Path) -> tuple[list[str], str]:
    """Flags this machine needs: `[]`, or `--no-repack` when the default path crashes.

    On CPUs with AMX (`-DGGML_NATIVE=ON` compiles it in) llama.cpp's AMX matmul, used through
    weight repacking, can segfault on the first decode; `--no-repack` takes the plain kernels.
    """
    base = [str(build.binary), "-m", str(model), "-p", "Hello", "-n", "2", "-no-cnv", "-c", "64"]
    note = ""
    for extra in ([], ["--no-repack"]):
        proc = subprocess.run(
            [*base, *extra], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
        )
        if proc.returncode == 0:
            return extra, note
        amx = "; the CPU has AMX, which llama.cpp uses on repacked weights" if _has_amx() else ""
        signal = ", SIGSEGV" if proc.returncode == -11 else ""
        note = f"the default run failed (exit {proc.returncode}{signal}){amx}"
    raise SetupError(f"{build.binary} fails on {model.name}: {proc.stderr[-2000:]}")


def llama_generate(
    build: LlamaBuild,
    model: Path,
    prompt: str,
    max_new_tokens: int,
    threads: int,
    control: list[str],
    runtime: list[str],
) -> tuple[str, list[int]]:
    """llama.cpp's greedy continuation of the raw `prompt` and the prompt tokens it used."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(prompt)
        prompt_file = f.name
    try:
        cmd = [
            str(build.binary),
            "-m",
            str(model),
            "-bf",  # -f drops the prompt's final newline (the chat template ends with one)
            prompt_file,
            "--no-escape",  # and the prompt is used as is: no \\n escapes processed
            "-n",
            str(max_new_tokens),
            "--temp",
            "0",
            "--seed",
            "0",
            "-c",
            "1024",
            "-t",
            str(threads),
            "-no-cnv",
            "--no-display-prompt",
            "--no-warmup",
            "--verbose-prompt",
            *runtime,
            *control,
        ]
        proc = _run(cmd, timeout=RUN_TIMEOUT_S)
    finally:
        os.unlink(prompt_file)
    # stdout: the continuation, " [end of text]\n" when an end-of-generation token came, "\n\n".
    text = proc.stdout.removesuffix("\n\n").removesuffix(" [end of text]\n")
    # --verbose-prompt lists the prompt tokens on stderr, then any other token lists.
    head = proc.stderr.split("number of tokens in prompt = ", 1)
    tokens: list[int] = []
    if len(head) == 2:
        count = int(head[1].split("\n", 1)[0])
        tokens = [int(m) for m in _VERBOSE_TOKEN.findall(head[1])[:count]]
    return text, tokens


def transformers_generate(
    model: Any,
    tokenizer: Any,
    task: Any,
    prompts: list[str],
    scorer: Any,
    bundle: Any | None,
) -> Generated:
    """The tool's greedy generation (same batches as its objective), steered by `bundle`."""
    from hpo import length_sorted_batches
    from hpo.model.decoding import generate_ids, truncate_at_stop

    obj = task.objective
    ids = [tokenizer.encode(p) for p in prompts]
    texts = [""] * len(prompts)
    eos = tokenizer.eos_token_id

    def run(handle: Any) -> None:
        for batch in length_sorted_batches([len(t) for t in ids], obj.batch_size):
            raw = generate_ids(
                model,
                tokenizer,
                [ids[i] for i in batch],
                obj.max_new_tokens,
                handle=handle,
                stop_strings=obj.stop or None,
            )
            for i, row in zip(batch, raw, strict=True):
                row = row[: row.index(eos)] if eos in row else row
                if obj.stop:
                    texts[i] = truncate_at_stop(tokenizer, row, obj.stop)[1]
                else:
                    texts[i] = tokenizer.decode(row, skip_special_tokens=True)

    if bundle is None:
        run(None)
    else:
        with bundle.apply(model) as handle:
            run(handle)
    scores = [float(scorer(t, None).value) for t in texts]
    return Generated(texts, scores, ids)


def _short(text: str, n: int = 90) -> str:
    flat = " ".join(text.split()).replace("|", "/")
    return flat if len(flat) <= n else flat[: n - 3] + "..."


def main(
    quick: bool = False,
    bundle_path: Path = DEFAULT_BUNDLE,
    llama_bin: Path | None = None,
    version: str = LLAMA_CPP_PYTHON,
) -> None:
    """Build (once) and run llama.cpp on the bundle's test prompts; print and record the table."""
    from hpo import load_bundle
    from hpo.run.tasks import load_task
    from objectives.prompts import render_prompt
    from objectives.scorers import get_scorer

    bundle_path = Path(bundle_path)
    if not (bundle_path / "steering.json").is_file():
        raise SetupError(
            f"no bundle at {bundle_path}: run `hpo optimize experiment=demo` first "
            "(or pass --bundle PATH)"
        )
    build = ensure_llama(version, llama_bin)
    print(f"llama.cpp: {build.binary} ({build.version_text})", flush=True)
    cvec = bundle_path / "control_vector.gguf"
    if not cvec.is_file():
        raise SetupError(f"bundle {bundle_path} has no control_vector.gguf")
    if ":" in str(cvec.resolve()):
        raise SetupError(f"--control-vector-scaled splits FNAME:SCALE on ':', got {cvec}")

    bundle = load_bundle(bundle_path)
    meta = bundle.meta
    task = task_config(bundle_path)
    if task.objective.kind != "generation":
        raise SetupError(f"task {task.name!r} is {task.objective.kind}, not generation")
    scorer = get_scorer(task.objective.scorer, task.objective.pattern)
    model, tokenizer = bundle.load_model(device="cpu")
    cols = task.columns
    rows = load_task(task).test()
    if quick:
        rows = rows[:QUICK_PROMPTS]
    prompts = [render_prompt(task, tokenizer, str(r[cols["prompt"]]), fields=r) for r in rows]
    n, max_new = len(prompts), task.objective.max_new_tokens
    threads = max(1, min(2, os.cpu_count() or 1))
    gguf = gguf_path(meta)

    started = time.perf_counter()
    tf: dict[str, Generated] = {
        "unsteered": transformers_generate(model, tokenizer, task, prompts, scorer, None)
    }
    tf["bundle"] = transformers_generate(model, tokenizer, task, prompts, scorer, bundle)
    own = bundle.application
    own_positions = own.positions
    bundle.application = own.at("all")
    tf["all"] = transformers_generate(model, tokenizer, task, prompts, scorer, bundle)
    bundle.application = own
    tf_seconds = time.perf_counter() - started
    print(f"transformers: {n} prompts x 3 in {tf_seconds:.0f} s", flush=True)

    configs = {
        "none": [],
        "scale 0": ["--control-vector-scaled", f"{cvec.resolve()}:0"],
        "scale 1": ["--control-vector", str(cvec.resolve())],
    }
    runtime, runtime_note = runtime_flags(build, gguf)
    if runtime:
        print(f"llama.cpp: {runtime_note}; running with {' '.join(runtime)}", flush=True)
    syntax = syntax_probe(build, gguf, cvec.resolve(), runtime)
    print(f"control-vector syntax: {syntax}", flush=True)
    lc: dict[str, Generated] = {}
    started = time.perf_counter()
    for name, control in configs.items():
        texts, toks = [], []
        for p in prompts:
            text, tokens = llama_generate(build, gguf, p, max_new, threads, control, runtime)
            texts.append(text)
            toks.append(tokens)
        lc[name] = Generated(texts, [float(scorer(t, None).value) for t in texts], toks)
    lc_seconds = time.perf_counter() - started
    print(f"llama.cpp: {n} prompts x 3 in {lc_seconds:.0f} s", flush=True)

    bos = tokenizer.bos_token_id
    same_tokens = _count(lc["none"].prompt_tokens, tf["unsteered"].prompt_tokens)
    double_bos = sum(t[:2] == [bos, bos] for t in lc["none"].prompt_tokens)
    zero_same = _count(lc["none"].texts, lc["scale 0"].texts)
    unsteered_same = _count(lc["none"].texts, tf["unsteered"].texts, strip=True)
    steered_same = _count(lc["scale 1"].texts, tf["all"].texts, strip=True)
    test = meta.get("metrics", {}).get("test", {})
    measured = meta.get("control_vector", {}).get("measured") or {}
    whole = f"steering.json (n={test.get('n', '?')})"
    table = [
        f"| {task.objective.scorer}, mean over {n} test prompts | llama.cpp | hpo (transformers, "
        f"this run) | {whole} |",
        "|---|---|---|---|",
        f"| unsteered | {lc['none'].mean:.4f} | {tf['unsteered'].mean:.4f} | "
        f"{_num(test.get('baseline'))} |",
        f"| `--control-vector-scaled FILE:0` | {lc['scale 0'].mean:.4f} | | |",
        f"| `--control-vector FILE` (scale 1) / hpo `positions: all` | {lc['scale 1'].mean:.4f} "
        f"| {tf['all'].mean:.4f} | {_num(measured.get('steered'))} |",
        f"| hpo, the bundle's own `positions: {own_positions}` | | {tf['bundle'].mean:.4f} | "
        f"{_num(test.get('steered'))} |",
        f"| gain of the control vector (scale 1 - unsteered), paired 95% CI | "
        f"{_gain(lc['scale 1'], lc['none'])} | {_gain(tf['all'], tf['unsteered'])} | "
        f"{_num(measured.get('difference'), '+.4f')} |",
    ]
    samples = test.get("samples", [])
    same_prompt = _count([s.get("text") for s in samples], prompts[: len(samples)])
    notes = [
        f"Prompt tokens llama.cpp used (`--verbose-prompt`) identical to hpo's tokenizer: "
        f"{same_tokens}/{n} (the GGUF's `add_bos_token` is false; the template's own "
        f"`<|im_start|>` is the BOS id, and no prompt starts with it twice: {double_bos}/{n} do). "
        f"Rendered prompts equal to the bundle's recorded test samples: "
        f"{same_prompt}/{min(len(samples), n)}.",
        f"**Scale 0 reproduces the no-vector text byte for byte: {zero_same}/{n}.**",
        f"llama.cpp - transformers, paired 95% CI: unsteered "
        f"{_gain(lc['none'], tf['unsteered'])}, steered {_gain(lc['scale 1'], tf['all'])}. "
        f"Text identical to transformers: unsteered {unsteered_same}/{n} (on average the first "
        f"{_shared_words(lc['none'].texts, tf['unsteered'].texts):.1f} words agree), scale 1 vs "
        f"`positions: all` {steered_same}/{n} "
        f"({_shared_words(lc['scale 1'].texts, tf['all'].texts):.1f} words): llama.cpp runs the "
        "quantized GGUF weights with quantized matmuls, transformers the same weights "
        "dequantized to float32, so greedy paths part after a near-tie; compare the means.",
    ]
    if measured:
        notes.append(
            f"hpo's own record of what the control vector does (`control_vector.measured`, "
            f"positions all, whole test split): feasible {measured.get('feasible')}"
            + (
                f", perplexity {_num(measured['fluency'].get('perplexity'), '.1f')}"
                if isinstance(measured.get("fluency"), dict)
                else ""
            )
            + f" (the bundle's own positions: "
            f"{_num(test.get('fluency', {}).get('steered', {}).get('perplexity'), '.1f')})."
        )
    examples = []
    for i in range(min(2, n)):
        examples += [
            f"- *{_short(str(rows[i][cols['prompt']]), 60)}*",
            f"  - llama.cpp unsteered: {_short(lc['none'].texts[i])}",
            f"  - hpo unsteered: {_short(tf['unsteered'].texts[i])}",
            f"  - llama.cpp scale 1: {_short(lc['scale 1'].texts[i])}",
            f"  - hpo `positions: all`: {_short(tf['all'].texts[i])}",
        ]
    build_line = (
        f"`{TARGET}` compiled in {build.build_seconds:.0f} s (`-j{JOBS}`, `nice`, 2 busy cores)"
        if build.build_seconds is not None
        else "given binary"
    )
    help_line = syntax.pop("--help", "")
    lines = [
        f"Bundle `{_rel(bundle_path)}` (task {task.name}, layers {meta['layers']}, alpha "
        f"{bundle.alpha:.4g}, mode {bundle.application.mode}, positions {own_positions}) on "
        f"`{gguf.name}`: its {n} held-out test prompts, rendered with the chat template as hpo "
        f"renders them and passed raw to `{TARGET} -bf FILE --no-escape -no-cnv --temp 0 "
        f"--seed 0 -n {max_new}` (greedy; `-f` would drop the template's final newline). "
        f"llama.cpp: llama-cpp-python {build.sdist_version} sdist, vendored "
        f"llama.cpp@{build.changelog_commit or '?'} (`--version`: {build.version_text}); "
        f"{build_line}; CPU"
        + (f"; `{' '.join(runtime)}` added because {runtime_note}." if runtime else "."),
        "",
        *table,
        "",
        *notes,
        "",
        f"Control-vector syntax (`--help`: {help_line}): "
        + "; ".join(f"`{form}` {verdict}" for form, verdict in syntax.items())
        + ". The scaled form is one argument `FILE:SCALE` (comma-separated for several), split "
        "on `:`, so FILE must not contain one.",
        "",
        *examples,
        "",
        machine_line("python -m bench.llama_cpp" + (" --quick" if quick else ""))
        + f" Times: transformers {tf_seconds:.0f} s, llama.cpp {lc_seconds:.0f} s "
        f"({3 * n} runs, {threads} threads).",
    ]
    publish("llama_cpp", "llama.cpp control vector", "\n".join(lines), quick)


def _num(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, int | float) else "?"


def _gain(a: Generated, b: Generated) -> str:
    """mean(a - b) over paired prompts with its bootstrap 95% interval."""
    from hpo.core.stats import bootstrap_diff_ci

    lo, hi = bootstrap_diff_ci(a.scores, b.scores, seed=0)
    return f"{a.mean - b.mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def _count(a: list[Any], b: list[Any], strip: bool = False) -> int:
    """How many pairs are equal (strings stripped first with `strip`)."""
    if strip:
        return sum(x.strip() == y.strip() for x, y in zip(a, b, strict=True))
    return sum(x == y for x, y in zip(a, b, strict=True))


def _shared_words(a: list[str], b: list[str]) -> float:
    """Mean length, in words, of the common prefix of paired texts."""
    shared = []
    for x, y in zip(a, b, strict=True):
        k = 0
        for u, v in zip(x.split(), y.split(), strict=False):
            if u != v:
                break
            k += 1
        shared.append(k)
    return sum(shared) / max(1, len(shared))


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def cli(argv: list[str] | None = None) -> None:
    """`python -m bench.llama_cpp [--quick] [--bundle PATH] [--llama-bin PATH]`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.llama_cpp",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_PROMPTS} prompts")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--llama-bin", type=Path, default=None, help="use this llama-completion")
    parser.add_argument("--llama-cpp-python", default=LLAMA_CPP_PYTHON, help="sdist version")
    parser.add_argument("--build-only", action="store_true", help="build (or find) and stop")
    args = parser.parse_args(argv)
    if args.build_only:
        build = ensure_llama(args.llama_cpp_python, args.llama_bin)
        print(f"{build.binary}\n{build.version_text}\n{build.commands}\n{build.build_seconds}")
        return
    try:
        main(args.quick, args.bundle, args.llama_bin, args.llama_cpp_python)
    except SetupError as e:
        sys.exit(f"bench.llama_cpp: {e}")


if __name__ == "__main__":
    cli()
