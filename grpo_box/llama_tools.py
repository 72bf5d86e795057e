"""llama.cpp's Python converters and quantizer, pinned to the installed llama-cpp-python.

GGUF export needs llama.cpp's `convert_hf_to_gguf.py` / `convert_lora_to_gguf.py` (Python scripts
with a `conversion/` package and their own `gguf-py`). They are not in the llama-cpp-python wheel,
but its source distribution vendors the exact llama.cpp revision the wheel was built from under
`vendor/llama.cpp/`. So instead of cloning and building llama.cpp from the network (what Unsloth's
GGUF export does), we extract just the converter files from that sdist once, at install time:

    pip download --no-deps --no-binary :all: llama-cpp-python==<version> -d DIR   # install.sh
    python -m grpo_box.llama_tools prepare --from DIR

into `<data_home>/llama.cpp-<version>/`. At run time `ensure_converter()` only looks there (or
re-extracts from an sdist already on disk); it never downloads.

The vendored `gguf-py` says version 0.19.0 like the `gguf` wheel on PyPI, but its code is newer
(new architectures and metadata keys the converter uses), so the converter always runs with the
vendored copy first on PYTHONPATH, in a subprocess of this venv's Python.

Quantization (K-quants and the rest) uses `llama_cpp.llama_model_quantize` from the bindings, so no
`llama-quantize` binary is needed. We call it in a child Python (`python -m grpo_box.llama_tools
quantize …`) rather than in the caller's process: its C code writes hundreds of lines straight to
file descriptor 2 and cannot be interrupted, and a crash there must not take the UI down.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .atomic import replace_dir
from .errors import UserError
from .progress import Progress

PACKAGE = "llama_cpp_python"
_MARKER = "grpo_box_converter.json"
_MARKER_VERSION = 1
# What the converters need from vendor/llama.cpp/ (a few MB of the 77 MB sdist).
_MEMBERS = (
    "convert_hf_to_gguf.py",
    "convert_lora_to_gguf.py",
    "conversion/",
    "gguf-py/",
    "models/templates/",
    "requirements/",
    "LICENSE",
)
_FIX = "run ./install.sh (or: python -m grpo_box.llama_tools prepare --download)"

# Converter output types (`--outtype`) and the llama_model_quantize file types we offer.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANTIZE_TYPES = (
    "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q5_1", "q4_k_m", "q4_k_s", "q4_0", "q4_1",
    "q3_k_l", "q3_k_m", "q3_k_s", "q2_k",
)


GPU_LAYERS_ENV = "GRPO_BOX_GPU_LAYERS"


def gpu_layers() -> int:
    """`n_gpu_layers` for every llama.cpp model GRPO Box loads (chat on a GGUF, the export checks,
    `serve`): all layers (-1) where llama-cpp-python was built with GPU offload, else 0. llama.cpp
    offloads nothing unless asked, so a CUDA build without this runs on the CPU. install.sh builds
    the CUDA flavour only where a CUDA toolkit (nvcc) exists. GRPO_BOX_GPU_LAYERS=N overrides it
    (e.g. 0 to leave the card to a training run)."""
    value = os.environ.get(GPU_LAYERS_ENV, "").strip()
    if value:
        try:
            return int(value)
        except ValueError:
            raise UserError(f"{GPU_LAYERS_ENV}={value!r}: give a number of layers (-1 for all, 0 for none)") from None
    try:
        import llama_cpp

        return -1 if llama_cpp.llama_supports_gpu_offload() else 0
    except Exception:  # bindings missing or broken: the caller's own import reports it
        return 0


class ConverterMissingError(UserError, RuntimeError):
    """The llama.cpp converter files are not installed; the message says how to install them."""


class ConversionError(UserError, RuntimeError):
    """A converter or quantizer run failed; the message carries the tail of its log."""


# -- where things are -----------------------------------------------------------------------------
def llama_cpp_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ConverterMissingError(f"llama-cpp-python is not installed: {_FIX}") from None


def converter_home(version: str | None = None) -> Path:
    from .models import data_home

    return data_home() / f"llama.cpp-{version or llama_cpp_version()}"


def downloads_dir() -> Path:
    from .models import data_home

    return data_home() / "downloads"


def sdist_name(version: str | None = None) -> str:
    return f"{PACKAGE}-{version or llama_cpp_version()}.tar.gz"


def _is_ready(home: Path, version: str) -> bool:
    marker = home / _MARKER
    if not marker.is_file():
        return False
    data = json.loads(marker.read_text())
    return data.get("version") == version and data.get("format") == _MARKER_VERSION


def ensure_converter() -> Path:
    """Path of `convert_hf_to_gguf.py` for the installed llama-cpp-python; never downloads.

    Extracts it from an sdist already on disk (data dir downloads/, pip's cache) when the tree is
    missing; raises ConverterMissingError with the fix otherwise.
    """
    version = llama_cpp_version()
    home = converter_home(version)
    if not _is_ready(home, version):
        sdist = find_sdist(version)
        if sdist is None:
            raise ConverterMissingError(
                f"llama.cpp's GGUF converter for llama-cpp-python {version} is not installed "
                f"(looked for {home} and {sdist_name(version)} in {downloads_dir()} and pip's cache): {_FIX}"
            )
        prepare_converter(sdist)
    return home / "convert_hf_to_gguf.py"


def lora_converter() -> Path:
    return ensure_converter().parent / "convert_lora_to_gguf.py"


def find_sdist(version: str | None = None, extra_dirs: Iterable[Path] = ()) -> Path | None:
    """An sdist tarball of this llama-cpp-python version already on disk, if any."""
    name = sdist_name(version)
    for folder in [*map(Path, extra_dirs), downloads_dir()]:
        if (folder / name).is_file():
            return folder / name
    cache = _pip_cache_dir()
    if cache is not None and cache.is_dir():
        for path in cache.rglob(name):
            return path
    return None


def _pip_cache_dir() -> Path | None:
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip()
    return Path(text) if out.returncode == 0 and text else None


# -- install time ---------------------------------------------------------------------------------
def download_sdist(dest: Path, version: str | None = None) -> Path:
    """`pip download` the sdist (install time only: this is the one step that uses the network)."""
    version = version or llama_cpp_version()
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(dest)]
    subprocess.run(cmd, check=True)
    path = dest / sdist_name(version)
    if not path.is_file():
        raise ConverterMissingError(f"pip download did not produce {path}")
    return path


def prepare_converter(sdist: str | Path | None = None, download: bool = False) -> Path:
    """Extract the converter files for the installed version into `converter_home()`.

    `sdist` is the tarball or a folder holding it; without one, an sdist already on disk is
    used, or (only with `download=True`, as install.sh does) one is fetched with pip.
    Returns the path of `convert_hf_to_gguf.py`.
    """
    version = llama_cpp_version()
    tarball = _locate_tarball(sdist, version, download)
    home = converter_home(version)
    tmp = Path(tempfile.mkdtemp(prefix=home.name + ".", dir=_mkdir(home.parent)))
    try:
        _extract(tarball, version, tmp)
        info = {"format": _MARKER_VERSION, "version": version, "sdist": str(tarball),
                "sha256": _sha256(tarball), "gguf_py": vendored_gguf_version(tmp)}
        (tmp / _MARKER).write_text(json.dumps(info, indent=2))
        try:  # the old folder stays usable until the new one is in place
            replace_dir(tmp, home)
        except OSError:
            if not _is_ready(home, version):  # else another process just finished the same job
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return home / "convert_hf_to_gguf.py"


def _locate_tarball(sdist: str | Path | None, version: str, download: bool) -> Path:
    if sdist is not None:
        path = Path(sdist).expanduser()
        if path.is_file():
            return path
        found = find_sdist(version, [path])
    else:
        found = find_sdist(version)
    if found is not None:
        return found
    if download:
        return download_sdist(downloads_dir(), version)
    raise ConverterMissingError(f"no {sdist_name(version)} found (looked in {sdist or downloads_dir()} and pip's cache): {_FIX}")


def _extract(tarball: Path, version: str, dest: Path) -> None:
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(tarball, "r:gz") as tar:
        members = [m for m in tar.getmembers() if _wanted(m.name, prefix)]
        if not any(m.name == prefix + "convert_hf_to_gguf.py" for m in members):
            raise ConverterMissingError(f"{tarball} has no {prefix}convert_hf_to_gguf.py: is it the llama-cpp-python {version} sdist?")
        for member in members:
            member.name = member.name[len(prefix):]
        tar.extractall(dest, members=members, filter="data")


def _wanted(name: str, prefix: str) -> bool:
    if not name.startswith(prefix):
        return False
    rest = name[len(prefix):]
    return any(rest == m or (m.endswith("/") and rest.startswith(m)) for m in _MEMBERS)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- gguf-py and supported architectures ----------------------------------------------------------
def vendored_gguf_version(tree: Path | None = None) -> str | None:
    tree = tree or ensure_converter().parent
    text = (tree / "gguf-py" / "pyproject.toml").read_text()
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return match.group(1) if match else None


def gguf_versions() -> dict[str, str | bool | None]:
    """The installed `gguf` wheel against the vendored gguf-py the converter runs with."""
    tree = ensure_converter().parent
    try:
        import gguf

        installed = importlib.metadata.version("gguf")
        same = _same_file(Path(gguf.__file__).parent / "constants.py", tree / "gguf-py" / "gguf" / "constants.py")
    except (ImportError, importlib.metadata.PackageNotFoundError):
        installed, same = None, False
    return {"installed": installed, "vendored": vendored_gguf_version(tree), "identical": same, "used": "vendored"}


def _same_file(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def supported_architectures(tree: Path | None = None) -> set[str]:
    """HF `architectures` names the converter handles, read from its TEXT_MODEL_MAP (no import)."""
    tree = tree or ensure_converter().parent
    module = ast.parse((tree / "conversion" / "__init__.py").read_text())
    for node in module.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
            return set(ast.literal_eval(node.value))
    raise ConverterMissingError(f"{tree}/conversion/__init__.py has no TEXT_MODEL_MAP: {_FIX}")


def converter_env() -> dict[str, str]:
    """Environment for a converter subprocess: the vendored gguf-py first, offline Hub."""
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    gguf_py = str(ensure_converter().parent / "gguf-py")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (gguf_py, env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


# -- running --------------------------------------------------------------------------------------
_PERCENT = re.compile(rb"(\d{1,3})%\|")


def run_logged(cmd: list[str], log_path: Path, progress: Progress | None = None, label: str = "",
               env: dict[str, str] | None = None) -> None:
    """Run `cmd`, writing its output to `log_path` and turning tqdm percentages into progress."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            log.write(chunk)
            found = _PERCENT.findall(chunk)
            if progress and found:
                progress(f"{label} {int(found[-1])}%", int(found[-1]) / 100)
        code = proc.wait()
    if code != 0:
        raise ConversionError(f"{label or cmd[1]} failed (exit {code}); log {log_path}:\n{tail(log_path)}")


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").replace("\r", "\n") if path.is_file() else ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def convert_hf(model_dir: Path, outfile: Path, outtype: str, log_path: Path, progress: Progress | None = None) -> None:
    """convert_hf_to_gguf.py MODEL_DIR --outtype OUTTYPE --outfile OUTFILE."""
    if outtype not in CONVERTER_TYPES:
        raise ValueError(f"converter outtype {outtype!r}: choose one of {', '.join(CONVERTER_TYPES)}")
    cmd = [sys.executable, str(ensure_converter()), str(model_dir), "--outtype", outtype, "--outfile", str(outfile)]
    run_logged(cmd, log_path, progress, f"convert {outtype}", converter_env())


def convert_lora(adapter_dir: Path, base_dir: Path, outfile: Path, outtype: str, log_path: Path,
                 progress: Progress | None = None) -> None:
    """convert_lora_to_gguf.py ADAPTER_DIR --base BASE_DIR (config only) --outtype … --outfile …."""
    cmd = [sys.executable, str(lora_converter()), str(adapter_dir), "--base", str(base_dir),
           "--outtype", outtype, "--outfile", str(outfile)]
    run_logged(cmd, log_path, progress, f"convert LoRA {outtype}", converter_env())


def quantize(src: Path, dst: Path, quant: str, log_path: Path, nthread: int = 0) -> None:
    """Quantize a GGUF in a child Python that calls `quantize_gguf` (see the module docstring)."""
    cmd = [sys.executable, "-m", "grpo_box.llama_tools", "quantize", str(src), str(dst), quant, "--nthread", str(nthread)]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])  # the child finds grpo_box even if not pip-installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    run_logged(cmd, log_path, None, f"quantize {quant}", env)


def quantize_gguf(src: Path, dst: Path, quant: str, nthread: int = 0) -> None:
    """In-process `llama_cpp.llama_model_quantize` (the bindings' copy of llama-quantize)."""
    import ctypes

    import llama_cpp

    if quant not in QUANTIZE_TYPES:
        raise ValueError(f"quantization {quant!r}: choose one of {', '.join(QUANTIZE_TYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = nthread
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if code != 0:
        raise ConversionError(f"llama_model_quantize({src.name} -> {quant}) returned {code}")


# -- CLI hook for install.sh ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpo_box.llama_tools", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    prep = sub.add_parser("prepare", help="extract llama.cpp's converters from the llama-cpp-python sdist")
    prep.add_argument("--from", dest="source", help="the sdist tarball or a folder holding it")
    prep.add_argument("--download", action="store_true", help="pip download the sdist if none is on disk")
    sub.add_parser("status", help="where the converter is and which gguf-py it uses")
    quant = sub.add_parser("quantize", help="quantize a GGUF with llama_model_quantize")
    quant.add_argument("src")
    quant.add_argument("dst")
    quant.add_argument("quant", choices=QUANTIZE_TYPES)
    quant.add_argument("--nthread", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "prepare":
        print(prepare_converter(args.source, download=args.download))
    elif args.cmd == "status":
        print(json.dumps({"converter": str(ensure_converter()), "gguf": gguf_versions()}, indent=2))
    else:
        quantize_gguf(Path(args.src), Path(args.dst), args.quant, args.nthread)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
