"""The validator's command line, input files and pure helpers: no root, no BPF needed."""

from __future__ import annotations

import ast
import json
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bpfcompat.validator import (
    VALIDATOR_VERSION,
    args,
    elf,
    libbpf,
    limits,
    run,
    system,
    tables,
    util,
    vstats,
)
from bpfcompat.validator import log as vlog

PACKAGE = Path(run.__file__).parent
CONTRACT_FLAGS = (
    "--artifact",
    "--out",
    "--manifest",
    "--functional-plan",
    "--log-dir",
    "--attach-mode",
    "--probe-features",
    "--set-map-max-entries",
    "--set-map-inner-ringbuf",
    "--prog-variants",
    "--version",
)


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """Any existing file: usage is checked before the artifact is opened."""
    path = tmp_path / "x.bpf.o"
    path.write_bytes(b"not elf")
    return path


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = run.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- help, version, usage errors -------------------------------------------------------------


def test_help_lists_every_contract_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for flag in CONTRACT_FLAGS:
        assert flag in out, flag
    assert "disabled,best-effort,required" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"bpfcompat-validator {VALIDATOR_VERSION}"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--attach-mode", "bogus"], "--attach-mode"),
        (["--probe-features", "maybe"], "'maybe'"),
        (["--set-map-max-entries", "nomap"], "'nomap'"),
        (["--set-map-max-entries", "m=0"], "'m=0'"),
        (["--set-map-max-entries", "m=-1"], "'m=-1'"),
        (["--set-map-max-entries", "m=4294967296"], "'m=4294967296'"),
        (["--set-map-max-entries", "m=1", "--set-map-max-entries", "m=cpus"], "twice"),
        (["--set-map-inner-ringbuf", "m=lots"], "'m=lots'"),
        (["--set-map-inner-ringbuf", "=4096"], "'=4096'"),
        (["--prog-variants", "g=a:bpf_no_such_helper"], "bpf_no_such_helper"),
        (["--prog-variants", "g=a:loop,a"], "listed twice"),
        (["--prog-variants", "g=,b"], "empty program name"),
        (["--prog-variants", "g=a", "--prog-variants", "g=b"], "group 'g' given twice"),
        (["--bogus-flag"], "--bogus-flag"),
    ],
)
def test_bad_flag_values_are_one_line_usage_errors(
    extra: list[str],
    needle: str,
    artifact: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--artifact", str(artifact), "--out", str(tmp_path / "r.json"), *extra]
    code, out, err = run_main(argv, capsys)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("bpfcompat-validator: error: ")
    assert needle in err
    assert not (tmp_path / "r.json").exists()


def test_missing_required_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main([], capsys)
    assert code == 1
    assert "--artifact" in err and "--out" in err
    assert err.count("\n") == 1


def test_missing_inputs_are_usage_errors(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "r.json")
    cases = [
        (["--artifact", str(tmp_path / "absent.o"), "--out", out], "--artifact"),
        (["--artifact", str(artifact), "--out", str(tmp_path / "no" / "r.json")], "--out"),
        (
            ["--artifact", str(artifact), "--out", out, "--manifest", str(tmp_path / "m")],
            "--manifest",
        ),
    ]
    for argv, flag in cases:
        code, _, err = run_main(argv, capsys)
        assert code == 1, argv
        assert err.count("\n") == 1 and flag in err, err


def test_usage_error_as_a_process_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bpfcompat.validator",
            "--artifact",
            "x",
            "--out",
            str(tmp_path / "r.json"),
            "--attach-mode",
            "sometimes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert "'sometimes'" in proc.stderr


def test_module_entry_point_help() -> None:
    """``python3 -m bpfcompat.validator --help`` works with only src on the path."""
    src = PACKAGE.parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "bpfcompat.validator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    for flag in CONTRACT_FLAGS:
        assert flag in proc.stdout


# --- flag value parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("1", True), ("yes", True), ("FALSE", False), ("0", False), ("no", False)],
)
def test_parse_bool(text: str, value: bool) -> None:
    assert args.parse_bool(text) is value


def test_parse_map_fixups() -> None:
    assert args.parse_map_max_entries("auxiliary_maps=cpus") == ("auxiliary_maps", "cpus")
    assert args.parse_map_max_entries("m=CPUS") == ("m", "cpus")
    assert args.parse_map_max_entries("m=0064") == ("m", "64")
    assert args.parse_inner_ringbuf("ringbuf_maps=8388608") == ("ringbuf_maps", 8388608)


@pytest.mark.parametrize(
    ("name", "helper_id"),
    [
        ("bpf_probe_read_kernel", 113),
        ("bpf_ringbuf_output", 130),
        ("bpf_ringbuf_reserve", 131),
        ("bpf_get_current_task_btf", 158),
        ("bpf_loop", 181),
        ("loop", 181),
        ("BPF_FUNC_loop", 181),
        ("bpf_map_lookup_elem", 1),
        ("bpf_trace_printk", 6),
        ("bpf_tail_call", 12),
        ("bpf_get_current_pid_tgid", 14),
        ("bpf_perf_event_output", 25),
        ("bpf_probe_read_user", 112),
        ("bpf_ringbuf_submit", 132),
        ("bpf_d_path", 147),
        ("bpf_snprintf", 165),
        ("bpf_find_vma", 180),
        ("bpf_user_ringbuf_drain", 209),
        ("bpf_cgrp_storage_delete", 211),
    ],
)
def test_helper_names(name: str, helper_id: int) -> None:
    assert tables.helper_id_from_name(name) == helper_id


@pytest.mark.parametrize("name", ["bpf_no_such_helper", "", "bpf_unspec", "181"])
def test_unknown_helper_names(name: str) -> None:
    assert tables.helper_id_from_name(name) is None


def test_helper_table_matches_uapi_header() -> None:
    """HELPER_NAMES must follow __BPF_FUNC_MAPPER order: index == helper id."""
    header = Path("/usr/include/linux/bpf.h")
    assert header.is_file(), "install linux-libc-dev (it provides /usr/include/linux/bpf.h)"
    text = header.read_text()
    start = text.index("__BPF_FUNC_MAPPER(FN")
    body = text[start : text.index("\n\n", start)]
    names = re.findall(r"FN\((\w+)", body)
    names = [n for n in names if n != "x"]  # 6.2+ headers: FN(x, ...) wrapper lines
    assert len(names) > 150
    assert list(tables.HELPER_NAMES[: len(names)]) == names


def test_resolve_helper_numeric_and_fallback() -> None:
    assert args.resolve_helper("181") == ("bpf_loop", 181)
    assert args.resolve_helper("0") == (None, 0)
    assert args.resolve_helper("bpf_loop") == ("bpf_loop", 181)
    with pytest.raises(ValueError, match="unknown helper"):
        args.resolve_helper("bpf_nope")


def test_parse_prog_variants() -> None:
    group = args.parse_prog_variants("recvmmsg_x=recvmmsg_x:bpf_loop,mid:113,recvmmsg_old_x")
    assert group["group"] == "recvmmsg_x"
    assert group["variants"] == [
        {"program": "recvmmsg_x", "helper": "bpf_loop", "helper_id": 181},
        {"program": "mid", "helper": "bpf_probe_read_kernel", "helper_id": 113},
        {"program": "recvmmsg_old_x", "helper": None, "helper_id": 0},
    ]
    explicit = args.parse_prog_variants("g=a:181,b:0")
    assert explicit["variants"][1] == {"program": "b", "helper": None, "helper_id": 0}


def test_config_merges_fixups_per_map(artifact: Path, tmp_path: Path) -> None:
    config = args.parse_args(
        [
            "--artifact",
            str(artifact),
            "--out",
            str(tmp_path / "r.json"),
            "--set-map-max-entries",
            "ringbuf_maps=cpus",
            "--set-map-inner-ringbuf",
            "ringbuf_maps=8388608",
            "--set-map-max-entries",
            "aux=16",
            "--probe-features",
            "no",
        ]
    )
    assert config.fixups == {
        "ringbuf_maps": {"requested": "cpus", "inner": 8388608},
        "aux": {"requested": "16", "inner": None},
    }
    assert config.probe_features is False
    assert config.attach_mode == "best-effort"


# --- manifest and functional plan -------------------------------------------------------------


def test_manifest_programs(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(
        json.dumps(
            {
                "programs": [
                    {"name": "a", "attach": {"required": True}},
                    {"name": "b"},
                    {"name": "c", "attach": {}},
                ],
                "metadata": {"project": "x"},
            }
        )
    )
    assert args.load_manifest(str(path)) == [
        {"name": "a", "attach_required": True},
        {"name": "b", "attach_required": False},
        {"name": "c", "attach_required": False},
    ]


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        json.dumps({"programs": {"a": 1}}),
        json.dumps({"programs": [{"attach": {"required": True}}]}),
        json.dumps({"programs": [{"name": "a", "attach": {"required": "yes"}}]}),
    ],
)
def test_bad_manifest_is_a_usage_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(args.UsageError, match="--manifest"):
        args.load_manifest(str(path))


def test_plan_defaults() -> None:
    tests = args.parse_functional_plan({"tests": [{"name": "t", "command": "true"}]})
    assert tests == [
        {
            "name": "t",
            "command": "true",
            "required": True,
            "timeout_seconds": 10.0,
            "expect_exit_code": 0,
            "expect_stdout_contains": None,
            "expect_stderr_contains": None,
            "retries": 0,
        }
    ]


def test_plan_full_entry() -> None:
    entry = {
        "name": "smoke",
        "command": "sh -c 'printf x'",
        "required": False,
        "timeout_seconds": 5,
        "expect_exit_code": 3,
        "expect_stdout_contains": "x",
        "expect_stderr_contains": None,
        "retries": 2,
    }
    (parsed,) = args.parse_functional_plan({"tests": [entry]})
    assert parsed == {**entry, "timeout_seconds": 5.0}


@pytest.mark.parametrize(
    ("plan", "needle"),
    [
        ([], "JSON object"),
        ({"tests": [], "extra": 1}, "unknown top-level"),
        ({"tests": {}}, "must be a list"),
        ({"tests": ["x"]}, "must be an object"),
        ({"tests": [{"name": "t", "command": "c", "shell": True}]}, "unknown key 'shell'"),
        ({"tests": [{"name": "t", "command": ["ls"]}]}, "command: wrong type"),
        ({"tests": [{"name": "t", "command": "c", "required": "yes"}]}, "required: wrong type"),
        ({"tests": [{"name": "t", "command": "c", "expect_exit_code": True}]}, "wrong type bool"),
        ({"tests": [{"name": "t", "command": "c", "timeout_seconds": "5s"}]}, "timeout_seconds"),
        ({"tests": [{"name": "t", "command": "c", "timeout_seconds": 0}]}, "timeout_seconds"),
        ({"tests": [{"name": "t", "command": "c", "expect_exit_code": 0.5}]}, "wrong type float"),
        ({"tests": [{"name": "t"}]}, "command is required"),
        ({"tests": [{"name": " ", "command": "c"}]}, "name is required"),
        ({"tests": [{"name": "t", "command": "a"}, {"name": "t", "command": "b"}]}, "duplicate"),
    ],
)
def test_plan_is_strict(plan: object, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        args.parse_functional_plan(plan)


def test_unreadable_plan_becomes_an_error_not_an_exception(tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text("{not json")
    tests, error = args.load_functional_plan(str(bad))
    assert tests == [] and error and "invalid functional plan" in error
    tests, error = args.load_functional_plan(str(tmp_path / "absent.json"))
    assert tests == [] and error and "cannot read" in error


# --- ELF parsing ------------------------------------------------------------------------------


def make_elf(sections: list[tuple[str, bytes]], machine: int = 247) -> bytes:
    """A minimal little-endian ELF64 relocatable object with the given sections."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n, _ in sections) + b".shstrtab\0"
    body = b""
    offsets = []
    for _, data in sections:
        offsets.append(64 + len(body))
        body += data
    shstr_off = 64 + len(body)
    body += names
    shoff = 64 + len(body)
    count = len(sections) + 2
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack(
        "<HHIQQQIHHHHHH", 1, machine, 1, 0, 0, shoff, 0, 64, 0, 0, 64, count, count - 1
    )
    table = bytes(64)
    name_off = 1
    for (name, data), off in zip(sections, offsets, strict=True):
        table += struct.pack("<IIQQQQIIQQ", name_off, 1, 0, 0, off, len(data), 0, 0, 1, 0)
        name_off += len(name) + 1
    table += struct.pack("<IIQQQQIIQQ", name_off, 3, 0, 0, shstr_off, len(names), 0, 0, 1, 0)
    return header + body + table


def test_inspect_elf_finds_btf_sections(tmp_path: Path) -> None:
    path = tmp_path / "ok.o"
    path.write_bytes(make_elf([("license", b"GPL\0"), (".BTF", b"\0" * 24), (".BTF.ext", b"x")]))
    info = elf.inspect_elf(str(path))
    assert info["elf_valid"] is True, info["elf_error"]
    assert info["has_btf"] is True and info["has_btf_ext"] is True
    assert info["sections"] == ["license", ".BTF", ".BTF.ext", ".shstrtab"]


def test_inspect_elf_without_btf(tmp_path: Path) -> None:
    path = tmp_path / "nobtf.o"
    path.write_bytes(make_elf([("license", b"GPL\0")]))
    info = elf.inspect_elf(str(path))
    assert info["elf_valid"] is True
    assert info["has_btf"] is False and info["has_btf_ext"] is False


@pytest.mark.parametrize(
    ("mangle", "needle"),
    [
        (lambda b: b"just some text\n", "no ELF magic"),
        (lambda b: b"", "no ELF magic"),
        (lambda b: b[:40], "truncated ELF header"),
        (lambda b: b[:100], "section headers at offset"),
        (lambda b: b[:-10], "do not fit"),
        (lambda b: b[:4] + b"\x01" + b[5:], "not a 64-bit ELF"),
        (lambda b: b[:18] + struct.pack("<H", 62) + b[20:], "not BPF"),
        (lambda b: b[:16] + struct.pack("<H", 2) + b[18:], "not a relocatable"),
    ],
)
def test_inspect_elf_rejects_corrupt_files(
    tmp_path: Path, mangle: Callable[[bytes], bytes], needle: str
) -> None:
    path = tmp_path / "bad.o"
    path.write_bytes(mangle(make_elf([("license", b"GPL\0"), (".BTF", b"\0" * 24)])))
    info = elf.inspect_elf(str(path))
    assert info["elf_valid"] is False
    assert needle in info["elf_error"]


def test_inspect_elf_section_beyond_eof(tmp_path: Path) -> None:
    data = bytearray(make_elf([("license", b"GPL\0")]))
    shoff = struct.unpack_from("<Q", data, 40)[0]
    struct.pack_into("<Q", data, shoff + 64 + 32, 1 << 20)  # section 1's sh_size
    path = tmp_path / "bad.o"
    path.write_bytes(bytes(data))
    info = elf.inspect_elf(str(path))
    assert info["elf_valid"] is False
    assert "extends beyond the end" in info["elf_error"]


# --- instruction decoding ---------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def program_section(example: str, section: str) -> bytes:
    """One section's bytes from a committed example object, found by the validator's ELF reader."""
    data = (EXAMPLES / example / f"{example}.bpf.o").read_bytes()
    for name, _type, offset, size in elf.elf_sections(data):
        if name == section:
            return data[offset : offset + size]
    raise AssertionError(f"{example} has no section {section!r}")


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def test_decode_calls_on_real_objects() -> None:
    tp = "tracepoint/syscalls/sys_enter_execve"
    text = program_section("helper-not-allowed", tp)
    assert len(text) % 8 == 0
    assert elf.decode_calls(text) == ([26], [])  # bpf_skb_load_bytes, nothing else
    # loop_x and loop_old_x share the section: get_current_pid_tgid, loop, map_update_elem
    assert elf.decode_calls(program_section("program-variants", tp)) == ([14, 181, 2], [])
    assert elf.decode_calls(program_section("simple-pass", tp)) == ([], [])
    assert tables.helper_entry_name(181) == "bpf_loop"
    assert tables.helper_entry_name(0) is None and tables.helper_entry_name(4096) is None


def test_decode_calls_tells_helpers_subprograms_and_kfuncs_apart() -> None:
    raw = b"".join(
        [
            insn(0x85, imm=14),  # helper call
            insn(0x18, dst=1, src=4, imm=3),  # ld_imm64 of a callback (BPF_PSEUDO_FUNC) ...
            insn(0x00, imm=0x85),  # ... its second half: code 0, never a call
            insn(0x85, src=1, imm=5),  # bpf-to-bpf call
            insn(0x85, src=2, imm=65900),  # kfunc call (relocated: imm is the BTF id)
            insn(0x85, imm=14),  # the same helper again
            insn(0x85, imm=181),
            insn(0x95),  # exit
            insn(0x85, imm=6)[:7],  # a torn trailing instruction is ignored
        ]
    )
    assert elf.decode_calls(raw) == ([14, 181], [65900])


# --- kernel log -------------------------------------------------------------------------------


def test_lockdown_denials_are_filtered_deduplicated_and_bounded() -> None:
    line = (
        "Lockdown: python3: use of bpf to read kernel RAM is restricted; see man kernel_lockdown.7"
    )
    old = "Lockdown: debugfs access is restricted; see man kernel_lockdown.7"  # pre-5.4 patches
    messages = [
        "Kernel is locked down from command line; see man kernel_lockdown.7",
        line,
        "random: crng init done",
        line,
        old,
    ]
    assert system.lockdown_denials(messages) == [line, old]
    many = [
        f"Lockdown: p{i}: use of tracefs is restricted; see man kernel_lockdown.7"
        for i in range(99)
    ]
    assert len(system.lockdown_denials(many)) == limits.LOCKDOWN_DENIALS_MAX


def test_unreadable_kernel_log_is_an_error_not_an_exception(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(system, "KMSG_PATH", str(tmp_path / "no-kmsg"))
    watch = system.KernelLog()
    assert watch.fd is None
    assert watch.error and "no-kmsg" in watch.error
    assert watch.messages() == []


# --- log helpers ------------------------------------------------------------------------------


def test_tail_text_keeps_whole_lines() -> None:
    text = "".join(f"line {i}\n" for i in range(1000))
    tail = util.tail_text(text, 100)
    assert len(tail) <= 100
    assert tail.startswith("line ") and tail.endswith("line 999\n")
    assert util.tail_text("short\n", 100) == "short\n"


def test_extract_verifier_log_both_libbpf_generations() -> None:
    log = "0: (b7) r0 = 0\nR0 !read_ok\n"
    new = f"libbpf: prog 'p': -- BEGIN PROG LOAD LOG --\n{log}-- END PROG LOAD LOG --\n"
    assert vlog.extract_verifier_log(new) == log
    old = f"libbpf: -- BEGIN DUMP LOG ---\nlibbpf: \n{log}\nlibbpf: -- END LOG --\n"
    assert vlog.extract_verifier_log(old) == log
    assert vlog.extract_verifier_log("libbpf: nothing here\n") == ""


def test_warnings_of_skips_verifier_dumps() -> None:
    window = [
        (2, "libbpf: debug chatter\n"),
        (0, "libbpf: prog 'p': BPF program load failed: Permission denied\n"),
        (0, "libbpf: prog 'p': -- BEGIN PROG LOAD LOG --\nlots\n-- END PROG LOAD LOG --\n"),
        (0, "libbpf: -- BEGIN DUMP LOG ---\n"),
        (0, "libbpf: \nold-style log\n"),
        (0, "libbpf: -- END LOG --\n"),
        (0, "libbpf: failed to load object 'x'\n"),
    ]
    assert vlog.warnings_of(window) == [
        "prog 'p': BPF program load failed: Permission denied",
        "failed to load object 'x'",
    ]


def test_log_collector_is_bounded_and_windows_nest() -> None:
    log = vlog.LibbpfLog(cap=1000)
    log.open_window()
    log.add(0, "libbpf: outer\n")
    log.open_window()
    for i in range(100):
        log.add(2, f"libbpf: message {i}")
    inner = log.close_window()
    outer = log.close_window()
    assert len(inner) == 100 and len(outer) == 101
    rendered = log.render()
    assert rendered.count("debug: libbpf: message") < 60  # ~1000 chars of 19-char messages
    assert "earlier messages dropped" in rendered
    assert rendered.endswith("debug: libbpf: message 99\n")
    huge = "x" * (limits.LOG_MESSAGE_CHARS * 2)
    log = vlog.LibbpfLog()
    log.add(0, huge)
    assert "characters elided" in log.render()


def test_error_names() -> None:
    assert tables.errno_name(22) == "EINVAL"
    assert tables.errno_name(95) == "EOPNOTSUPP"
    assert tables.errno_name(524) == "ENOTSUPP"
    assert tables.errno_name(4007) == "LIBBPF_ERRNO__VERIFY"
    assert tables.errno_name(0) is None
    assert tables.error_text(4001) == "BPF object format invalid"
    assert tables.errno_from_text("Permission denied") == 13


def test_pointer_results_decode_err_ptr() -> None:
    """libbpf 0.x returns ERR_PTR(-errno); 1.x NULL + errno."""
    span = libbpf._PTR_SPAN
    assert libbpf._ptr_result(0x7F00_0000_1000) == (0x7F00_0000_1000, 0)
    assert libbpf._ptr_result(span - 22) == (None, -22)


def test_package_parses_as_python_3_9_and_imports_only_the_stdlib() -> None:
    """The package runs in guests with Python 3.9+ and nothing but the standard library:
    no match statements and the like, no import of anything outside the package."""
    sources = sorted(PACKAGE.glob("*.py"))
    assert len(sources) > 10
    allowed = sys.stdlib_module_names | {"__future__"}
    for path in sources:
        source = path.read_text()
        ast.parse(source, feature_version=(3, 9))
        imported = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add((node.module or "").split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 1, f"{path.name}: imports from outside the package"
        assert imported <= allowed, (path.name, imported - allowed)


def test_missing_libbpf_still_writes_a_result(
    artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No libbpf in the guest is an infrastructure error (exit 1), with a result to read."""
    monkeypatch.setattr(
        libbpf.Libbpf, "load", classmethod(lambda cls: (None, "libbpf not found: x"))
    )
    out = tmp_path / "r.json"
    argv = ["--artifact", str(artifact), "--out", str(out), "--probe-features", "false"]
    code, _, _ = run_main(argv, capsys)
    assert code == 1
    result = json.loads(out.read_text())
    assert result["status"] == "fail"
    assert result["load"]["stage"] == "libbpf"
    assert result["errors"] == [{"step": "libbpf", "message": "libbpf not found: x"}]
    assert Path(f"{out}.libbpf.log").is_file()


# --- the verifier's summary lines (vstats) ----------------------------------------------------

# Level-4 logs as the kernels of the default matrix wrote them (program-variants and
# verifier-oob examples); the last is a level-1 log's tail (time and stack depth absent).
STATS_LOGS = {
    "5.10": "verification time 2560 usec\nstack depth 16\nprocessed 73 insns (limit 1000000) "
    "max_states_per_insn 0 total_states 1 peak_states 1 mark_read 0\n",
    "6.1": "verification time 24316 usec\nstack depth 56+0\nprocessed 32 insns (limit 1000000) "
    "max_states_per_insn 0 total_states 2 peak_states 2 mark_read 1\n",
    "6.12": "arg#0 reference type('UNKNOWN ') size cannot be determined: -22\ninvalid access "
    "to map value, value_size=8 off=8 size=8\nR0 min value is outside of the allowed memory "
    "range\nverification time 2730 usec\nstack depth 8\nprocessed 8 insns (limit 1000000) "
    "max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n",
    "7.2": "verification time 50857 usec\nstack depth 56+0 max 32\ninsns processed 55\n"
    "processed 55 insns (limit 1000000) max_states_per_insn 1 total_states 4 peak_states 5 "
    "mark_read 0\n",
    "level 1": "; return *v; @ verifier-oob.bpf.c:29\n7: (79) r0 = *(u64 *)(r0 +8)\ninvalid "
    "access to map value, value_size=8 off=8 size=8\nR0 min value is outside of the allowed "
    "memory range\nprocessed 8 insns (limit 1000000) max_states_per_insn 0 total_states 0 "
    "peak_states 0 mark_read 0\n",
}


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ("5.10", (73, 1000000, 0, 1, 1, [16], 2560)),
        ("6.1", (32, 1000000, 0, 2, 2, [56, 0], 24316)),
        ("6.12", (8, 1000000, 0, 0, 0, [8], 2730)),
        ("7.2", (55, 1000000, 1, 4, 5, [56, 0], 50857)),
        ("level 1", (8, 1000000, 0, 0, 0, None, None)),
    ],
)
def test_verifier_stats_of_each_kernel(kernel: str, expected: tuple[object, ...]) -> None:
    stats = vstats.parse_verifier_stats(STATS_LOGS[kernel])
    assert stats is not None
    assert tuple(stats[key] for key in vstats.STATS_KEYS) == expected


def test_verifier_stats_absent_or_forged() -> None:
    assert vstats.parse_verifier_stats("") is None
    assert vstats.parse_verifier_stats("R1 invalid mem access 'scalar'\n") is None
    # an older kernel's shorter line: what is there, nulls for the rest
    short = vstats.parse_verifier_stats("processed 12 insns (limit 131072), stack depth 8\n")
    assert short is not None and (short["insns_processed"], short["insn_limit"]) == (12, 131072)
    assert short["states_total"] is None and short["stack_depth"] == [8]
    assert short["verify_usec"] is None
    # source lines the verifier quotes from the artifact start with "; ": never read
    forged = "; processed 999 insns (limit 1)\n" + STATS_LOGS["6.1"]
    assert vstats.parse_verifier_stats(forged)["insns_processed"] == 32  # type: ignore[index]
    huge = "processed " + "9" * 40 + " insns (limit 1000000)\n"
    assert vstats.parse_verifier_stats(huge) is None
    # the summary is the log's end: a long log is read from its tail only
    long_log = "0: (b7) r0 = 0\n" * 100_000 + STATS_LOGS["5.10"]
    assert vstats.parse_verifier_stats(long_log)["insns_processed"] == 73  # type: ignore[index]


def test_refused_program_is_the_last_one_libbpf_names() -> None:
    text = (
        "libbpf: prog 'a': BPF program load failed: Permission denied\n"
        "libbpf: prog 'a': failed to load: -13\n"
        "libbpf: failed to load object 'x.bpf.o'\n"
    )
    assert vstats.refused_program(text) == "a"
    assert vstats.refused_program("libbpf: failed to load program 'old'\n") == "old"
    assert vstats.refused_program("libbpf: map 'm': failed to create: -22\n") is None
    window = [(2, "libbpf: prog 'b': failed to load: -1\n"), (0, "libbpf: warn\n")]
    assert vstats.refused_program(vstats.warn_text(window)) is None  # debug lines ignored
