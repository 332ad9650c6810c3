"""The ``cwp-export`` command line, run as a real subprocess where exit codes and stderr matter.

Every refusal must be one line on stderr (``error: ...``, no traceback), a non-zero exit code, and
leave no ``.gguf`` and no temporary ``.*partial*`` file behind. Positive cases check the help text,
the version, the written files and the manifest, and that a re-run is byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import cwp_export
from cwp_export.arch import supported_architectures
from cwp_export.cli import export_cmd, main
from cwp_export.convert import output_types
from cwp_export.errors import InputError
from cwp_export.formats.gguf_writer import GGUFWriter
from cwp_export.testing import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
NAME = "tiny"  # folder name of the tiny checkpoint, hence the GGUF name tiny-<QUANT>.gguf


# -- helpers ------------------------------------------------------------------------------------

def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(extra)
    return env


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def _plain(args: tuple[object, ...]) -> list[str]:
    """These tests exercise the converter: an export without ``--protect`` is made plain
    (``--protect 0``) instead of the CLI's protected default (tests/protect cover that)."""
    argv = [str(a) for a in args]
    subcommand = argv and argv[0] in main.commands and argv[0] != "export"
    if argv and not subcommand and not any(a.startswith("-") for a in argv[:1]) \
            and "--protect" not in argv and "--help" not in argv and "-h" not in argv:
        argv += ["--protect", "0"]
    return argv


def run_cli(*args: object, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 180) -> Outcome:
    """Run ``python -m cwp_export.cli ARGS`` in ``cwd``: a real process, with its real exit code
    and stderr as written (carriage returns kept)."""
    p = subprocess.run([sys.executable, "-m", "cwp_export.cli", *_plain(args)], cwd=cwd,
                       env=env or _env(), capture_output=True, timeout=timeout)
    return Outcome(p.returncode, p.stdout.decode(), p.stderr.decode())


def invoke(*args: object) -> Outcome:
    """Run the CLI in this process with click's CliRunner: fast (no 3 s torch import), used for
    variants of a case that :func:`run_cli` already covers. A traceback would surface here as
    the exception itself."""
    res = CliRunner().invoke(main, _plain(args), prog_name="cwp-export")
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return Outcome(res.exit_code, res.stdout, res.stderr)


SUB, INPROC = "subprocess", "in-process"


def cli(how: str, *args: object, cwd: Path) -> Outcome:
    return run_cli(*args, cwd=cwd) if how == SUB else invoke(*args)


def leftovers(outdir: Path) -> list[str]:
    """Model files and temporary files under ``outdir`` (which may not exist)."""
    if not outdir.exists():
        return []
    return sorted(str(p.relative_to(outdir)) for p in outdir.rglob("*")
                  if p.name.endswith(".gguf") or "partial" in p.name
                  or p.name.startswith(".cwp-write-check-"))


def no_partials(outdir: Path) -> list[str]:
    return [p for p in leftovers(outdir) if not p.endswith(".gguf")]


def assert_refused(proc: Outcome, outdir: Path, *needles: str, code: int | None = None) -> str:
    """One ``error:`` line on stderr, no traceback, non-zero exit, nothing left in ``outdir``."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.split("\n") if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert proc.returncode != 0
    if code is not None:
        assert proc.returncode == code, (proc.returncode, line)
    assert "wrote" not in proc.stdout, proc.stdout
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    assert leftovers(outdir) == [], leftovers(outdir)
    return line


def edit_config(model: Path, **changes) -> None:
    p = model / "config.json"
    cfg = json.loads(p.read_text())
    cfg.update(changes)
    p.write_text(json.dumps(cfg, indent=2))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mount(*args: str) -> str | None:
    """Run ``mount ARGS``; None on success, else the reason it failed."""
    if shutil.which("mount") is None:
        return "no mount command"
    p = subprocess.run(["mount", *args], capture_output=True, text=True)
    return None if p.returncode == 0 else (p.stderr.strip() or f"exit {p.returncode}")


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("src") / NAME)


@pytest.fixture
def model(tiny_src: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny llama checkpoint that a test may damage."""
    return Path(shutil.copytree(tiny_src, tmp_path / "models" / NAME))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


# -- bad input ----------------------------------------------------------------------------------

def test_unknown_architecture_lists_supported(model: Path, out: Path) -> None:
    edit_config(model, architectures=["GPT2LMHeadModel"])
    proc = run_cli(model, "-o", out, "--no-progress", cwd=model.parent)
    assert_refused(proc, out, "GPT2LMHeadModel", "not supported", *supported_architectures(),
                   code=InputError.exit_code)


@pytest.mark.parametrize("case,how", [("no-config", SUB), ("no-weights", SUB), ("no-folder", SUB),
                                      ("a-file", INPROC)])
def test_missing_inputs(case: str, how: str, model: Path, out: Path) -> None:
    target, needle = model, ""
    if case == "no-config":
        (model / "config.json").unlink()
        needle = "no config.json"
    elif case == "no-weights":
        (model / "model.safetensors").unlink()
        needle = "no *.safetensors"
    elif case == "no-folder":
        target, needle = model.parent / "does-not-exist", "not found"
    else:
        target, needle = model / "config.json", "is a file"
    proc = cli(how, target, "-o", out, "--no-progress", cwd=model.parent)
    assert_refused(proc, out, needle, code=2)


def test_truncated_safetensors(model: Path, out: Path) -> None:
    st = model / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    proc = run_cli(model, "-o", out, "--no-progress", cwd=model.parent)
    assert_refused(proc, out, "model.safetensors", "truncated", code=2)


@pytest.mark.parametrize("damage,how", [("all-garbage", SUB), ("garbage-header", INPROC),
                                         ("trailing-bytes", INPROC), ("offset-gap", INPROC)])
def test_corrupt_safetensors_header(damage: str, how: str, model: Path, out: Path) -> None:
    st = model / "model.safetensors"
    data = st.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    if damage == "all-garbage":
        st.write_bytes(bytes((i * 167 + 13) % 256 for i in range(len(data))))
    elif damage == "garbage-header":  # plausible length, undecodable JSON
        st.write_bytes(data[:8] + b"\xff" * n + data[8 + n:])
    elif damage == "trailing-bytes":  # header fine, but the data section has extra bytes
        st.write_bytes(data + b"\0" * 64)
    else:  # every tensor starts 4 bytes late, after a gap the offsets do not cover
        header = json.loads(data[8:8 + n])
        for k, info in header.items():
            if k != "__metadata__":
                info["data_offsets"] = [o + 4 for o in info["data_offsets"]]
        raw = json.dumps(header).encode()
        st.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4 + data[8 + n:])
    proc = cli(how, model, "-o", out, "--no-progress", cwd=model.parent)
    line = assert_refused(proc, out, "model.safetensors", code=2)
    assert any(w in line for w in ("corrupt", "truncated", "not a valid safetensors")), line


class _Trap:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): proof that a file was loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("filename,how", [("pytorch_model.bin", SUB),
                                           ("model.safetensors", INPROC)])
def test_pickle_checkpoint_is_refused_and_never_unpickled(filename: str, how: str, model: Path,
                                                          out: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    marker = tmp_path / "UNPICKLED"
    state = load_file(model / "model.safetensors")
    state["trap"] = _Trap(marker)
    (model / "model.safetensors").unlink()
    pickled = tmp_path / "trap.bin"
    torch.save(state, pickled)
    # the trap is armed: loading the file the unsafe way does create the marker
    torch.load(pickled, weights_only=False)
    assert marker.exists()
    marker.unlink()
    shutil.move(pickled, model / filename)

    proc = cli(how, model, "-o", out, "--no-progress", cwd=model.parent)
    if filename.endswith(".bin"):
        assert_refused(proc, out, "pickle", "pytorch_model.bin", code=2)
    else:  # a pickle disguised as safetensors is not a safetensors file
        assert_refused(proc, out, "model.safetensors", code=2)
    assert not marker.exists(), "cwp-export unpickled the checkpoint"


@pytest.mark.parametrize("key,how", [("intermediate_size", SUB), ("hidden_size", INPROC)])
def test_weights_do_not_match_config(key: str, how: str, model: Path, out: Path) -> None:
    edit_config(model, **{key: 96})
    proc = cli(how, model, "-o", out, "--no-progress", cwd=model.parent)
    assert_refused(proc, out, "shape", "config.json", code=2)


@pytest.mark.parametrize("key,value,how", [("hidden_size", "big", SUB),
                                           ("num_key_value_heads", 0, INPROC),
                                           ("num_attention_heads", 0, INPROC),
                                           ("max_position_embeddings", -1, INPROC),
                                           ("rms_norm_eps", "small", INPROC)])
def test_nonsense_config_values(key: str, value, how: str, model: Path, out: Path) -> None:
    """Wrong types or impossible values in config.json are user errors, not tracebacks."""
    edit_config(model, **{key: value})
    proc = cli(how, model, "-o", out, "--no-progress", cwd=model.parent)
    assert_refused(proc, out, "config.json", repr(value), code=2)


def test_unknown_quant_lists_supported(model: Path, out: Path) -> None:
    proc = run_cli(model, "--quant", "Q4_K", "-o", out, "--no-progress", cwd=model.parent)
    # Q4_K is a block type, not a preset: the presets are Q4_K_M / Q4_K_S
    assert_refused(proc, out, "'Q4_K'", *output_types(), code=2)


@pytest.mark.parametrize("value,needle,how", [("junk", "not a number", SUB),
                                              ("1 %%", "not a number", INPROC),
                                              ("101%", "outside", INPROC),
                                              ("-1%", "outside", INPROC)])
def test_protect_refused(value: str, needle: str, how: str, model: Path, out: Path) -> None:
    proc = cli(how, model, "--protect", value, "-o", out, "--no-progress", cwd=model.parent)
    assert_refused(proc, out, needle, code=2)


@pytest.mark.parametrize("value", ["0", "0%"])
def test_protect_zero_accepted(value: str, model: Path, out: Path) -> None:
    res = invoke(model, "--protect", value, "-o", out, "--no-progress")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert (out / f"{NAME}-F16.gguf").is_file() and (out / "manifest.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["options"]["protect"] == 0


def test_hub_id_not_in_cache(tmp_path: Path, out: Path) -> None:
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    proc = run_cli("nobody/nothing", "-o", out, "--no-progress", cwd=tmp_path,
                   env=_env(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home)))
    assert_refused(proc, out, "nobody/nothing", code=2)


# -- NaN weights --------------------------------------------------------------------------------

NAN_HF = "model.layers.0.mlp.down_proj.weight"
NAN_GGUF = "blk.0.ffn_down.weight"


def _put_nan(model: Path) -> None:
    from safetensors.torch import load_file, save_file

    st = model / "model.safetensors"
    state = load_file(st)
    state[NAN_HF][3, 5] = float("nan")
    save_file(state, st, metadata={"format": "pt"})


@pytest.mark.parametrize("quant", ["Q8_0", "F16", "BF16", "F32"])
def test_nan_weight_refused_for_every_type(model: Path, out: Path, quant: str) -> None:
    """A NaN in the checkpoint is damage, whatever the output type: refused, naming both the
    Hugging Face and the GGUF tensor."""
    _put_nan(model)
    proc = run_cli(model, "--quant", quant, "-o", out, "--no-progress", cwd=model.parent)
    assert_refused(proc, out, NAN_GGUF, "NaN", code=2)
    assert NAN_HF in proc.stderr


def test_f16_overflow_refused(model: Path, out: Path) -> None:
    from safetensors.torch import load_file, save_file

    st = model / "model.safetensors"
    state = load_file(st)
    state[NAN_HF][0, 0] = 1e6
    save_file(state, st, metadata={"format": "pt"})
    proc = run_cli(model, "--quant", "F16", "-o", out, "--no-progress", cwd=model.parent)
    assert_refused(proc, out, "beyond the F16 range", "--quant BF16", code=2)
    assert invoke(model, "--quant", "BF16", "-o", out, "--no-progress").returncode == 0


# -- unwritable or full output ------------------------------------------------------------------

def test_outdir_under_a_regular_file(model: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "somefile"
    blocker.write_text("not a directory")
    proc = run_cli(model, "-o", blocker / "sub", "--no-progress", cwd=tmp_path)
    assert_refused(proc, tmp_path, "not writable", str(blocker / "sub"), code=3)
    assert blocker.read_text() == "not a directory"


def test_outdir_under_proc(model: Path, tmp_path: Path) -> None:
    target = Path("/proc/cwp-export-test/out")
    if target.parent.exists():
        pytest.skip(f"{target.parent} exists")
    proc = run_cli(model, "-o", target, "--no-progress", cwd=tmp_path)
    assert_refused(proc, target.parent, "not writable", code=3)


def test_outdir_on_read_only_mount(model: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    why = _mount("--bind", str(ro), str(ro))
    if why:
        pytest.skip(f"cannot bind-mount here (needs root with CAP_SYS_ADMIN): {why}")
    try:
        why = _mount("-o", "remount,bind,ro", str(ro))
        if why:
            pytest.skip(f"cannot remount read-only here: {why}")
        proc = run_cli(model, "-o", ro, "--no-progress", cwd=tmp_path)
        assert_refused(proc, ro, "not writable", "read-only", code=3)
        proc = invoke(model, "-o", ro / "sub", "--no-progress")
        assert_refused(proc, ro, "not writable", code=3)
    finally:
        _umount(ro)


def _small_tmpfs(where: Path, size: str):
    where.mkdir()
    why = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
    if why:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {why}")


def test_full_disk_while_writing_the_model(model: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    _small_tmpfs(full, "200k")  # the tiny F16 model needs about 240 kB
    try:
        proc = run_cli(model, "-o", full, "--no-progress", cwd=tmp_path)
        assert_refused(proc, full, "no space left", code=3)
        assert list(full.iterdir()) == []
    finally:
        _umount(full)


def test_full_disk_while_writing_the_manifest(model: Path, tmp_path: Path) -> None:
    """Room for the model but not for manifest.json: refused, no temporary file left. (The
    complete, verified model file is kept; only the manifest is missing.)"""
    from cwp_export.api import export

    size = export(model, outdir=tmp_path / "probe", progress=False, argv=[]).files[0]["size"]
    full = tmp_path / "full"
    _small_tmpfs(full, f"{math.ceil(size / 4096) * 4}k")
    try:
        proc = run_cli(model, "-o", full, "--no-progress", cwd=tmp_path)
        assert "Traceback" not in proc.stderr, proc.stderr
        lines = [ln for ln in proc.stderr.split("\n") if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert "no space left" in lines[0].lower() and "manifest.json" in lines[0], lines[0]
        assert proc.returncode == 3
        assert no_partials(full) == [] and not (full / "manifest.json").exists()
    finally:
        _umount(full)


def test_full_disk_with_progress_bar(model: Path, tmp_path: Path) -> None:
    """With progress bars on (the default), the bar is cleared and the error is the last thing a
    terminal shows; no traceback, no partial file."""
    full = tmp_path / "full"
    _small_tmpfs(full, "200k")
    try:
        proc = run_cli(model, "-o", full, cwd=tmp_path)
        assert "Traceback" not in proc.stderr, proc.stderr
        shown = [ln.rsplit("\r", 1)[-1] for ln in proc.stderr.split("\n")]
        shown = [ln for ln in shown if ln.strip()]
        assert len(shown) == 1 and shown[0].startswith("error: no space left"), proc.stderr
        assert proc.returncode == 3 and list(full.iterdir()) == []
    finally:
        _umount(full)


# -- interruption -------------------------------------------------------------------------------

_PAUSING_CLI = r"""
import sys, time
from pathlib import Path
from cwp_export import convert

ready = Path(sys.argv[1])
real = convert._producer
calls = [0]

def pausing(source, t):
    produce = real(source, t)
    def p():
        calls[0] += 1
        if calls[0] == 3:  # mid-write: the header and two tensors are in the temporary file
            ready.touch()
            time.sleep(120)
        return produce()
    return p

convert._producer = pausing
from cwp_export.cli import main
main(args=sys.argv[2:], prog_name="cwp-export")
"""


def test_sigint_while_writing_leaves_nothing(model: Path, out: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _PAUSING_CLI, str(ready), str(model), "-o",
                             str(out), "--no-progress", "--protect", "0"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the export never reached the pause:\n{proc.communicate()[1]}")
            time.sleep(0.05)
        assert no_partials(out), "expected a temporary file while writing"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr
    assert proc.returncode == 130
    assert leftovers(out) == [] and not (out / "manifest.json").exists()


def test_writer_interrupted_leaves_no_file(tmp_path: Path) -> None:
    from gguf import GGMLQuantizationType as T

    dest = tmp_path / "m.gguf"
    dest.write_bytes(b"previous complete file")
    w = GGUFWriter()
    w.add_string("general.architecture", "llama")

    def interrupt() -> bytes:
        raise KeyboardInterrupt

    w.add_tensor("a", (8,), T.F32, lambda: b"\0" * 32)
    w.add_tensor("b", (8,), T.F32, interrupt)
    w.add_tensor("c", (8,), T.F32, lambda: b"\0" * 32)
    with pytest.raises(KeyboardInterrupt):
        w.write(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no .m.gguf.partial-*
    assert dest.read_bytes() == b"previous complete file"  # the old file is untouched

    dest.unlink()
    with pytest.raises(KeyboardInterrupt):
        w.write(dest)
    assert list(tmp_path.iterdir()) == []


# -- help, version, successful exports ----------------------------------------------------------

def _option_names() -> list[str]:
    names = []
    for p in export_cmd.params:
        if p.param_type_name == "option":
            names += [*p.opts, *p.secondary_opts]
    return names


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["export", "--help"], []])
def test_help_documents_every_option(argv: list[str]) -> None:
    res = CliRunner().invoke(main, argv, prog_name="cwp-export")
    assert res.exit_code == 0, res.output
    assert "MODEL" in res.output
    names = _option_names()
    assert {"--quant", "-q", "--outdir", "-o", "--protect", "--progress", "--no-progress"} <= set(names)
    for name in names:
        assert name in res.output, f"{name} missing from `cwp-export {' '.join(argv)}`"
    for p in export_cmd.params:
        if p.param_type_name == "option" and p.help:
            assert p.help.split(".")[0] in " ".join(res.output.split()), p.help


def test_version() -> None:
    from importlib import metadata

    exe = shutil.which("cwp-export")
    cmd = [exe] if exe else [sys.executable, "-m", "cwp_export.cli"]
    proc = subprocess.run([*cmd, "--version"], capture_output=True, text=True, env=_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"cwp-export, version {cwp_export.__version__}"
    assert cwp_export.__version__ == metadata.version("cwp-export")


def test_export_writes_model_and_true_manifest_and_reruns_identically(model: Path,
                                                                      out: Path) -> None:
    argv = [model, "-o", out, "--no-progress"]
    first = run_cli(*argv, cwd=model.parent)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr and first.stderr.strip() == "", first.stderr
    gguf, manifest = out / f"{NAME}-F16.gguf", out / "manifest.json"
    lines = first.stdout.splitlines()
    assert len(lines) == 2, first.stdout
    assert lines[0].startswith(f"wrote {gguf} (") and sha256(gguf)[:16] in lines[0], lines[0]
    assert lines[1] == f"wrote {manifest}"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", gguf.name]

    doc = json.loads(manifest.read_text())
    (entry,) = doc["files"]
    assert entry["path"] == gguf.name and entry["role"] == "model" and entry["quant"] == "F16"
    assert entry["size"] == gguf.stat().st_size
    assert entry["sha256"] == sha256(gguf)
    assert doc["source"]["architecture"] == "LlamaForCausalLM"
    opts = doc["options"]
    assert {k: opts[k] for k in ("quant", "protect", "overrides", "imatrix")} == \
        {"quant": "F16", "protect": 0, "overrides": {}, "imatrix": None}
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(gguf).tensors}
    assert opts["tensor_types"] == types
    assert doc["versions"]["cwp-export"] == cwp_export.__version__

    arch = GGUFReader(gguf).fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"

    # the same command again: byte-identical model and manifest (no timestamps, same order)
    before = gguf.read_bytes(), manifest.read_bytes()
    second = run_cli(*argv, cwd=model.parent)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert (gguf.read_bytes(), manifest.read_bytes()) == before
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", gguf.name]
