"""The profiling scripts: bad arguments are one-line errors before any GPU is needed; ncu_summary parses ncu reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_feature_map_is_a_clear_error():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "profile_triton_linear.py"), "--maps", "favor,relu"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "error: unknown feature map 'relu' in --maps: choose from favor, elu, cos"


# A shortened Nsight Compute text report: one Triton kernel and one PyTorch kernel.
NCU_REPORT = """\
==PROF== Disconnected from process 842
  _state_fwd_kernel (2, 33, 8)x(128, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
    smsp__average_warps_issue_stalled_wait_per_issue_active.ratio          inst         1.20
    smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio       inst         0.10
    smsp__average_warps_issue_stalled_selected_per_issue_active.ratio      inst            1
    sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active             %        28.79
    DRAM Throughput                   %        54.00
    Duration                         ms         2.22
    Local Memory Spilling Requests                       41,444,096
    Registers Per Thread             register/thread               255
    Achieved Occupancy                        %        12.14
  void at::reduce_kernel<512, 1>(T3) (8, 1, 1)x(64, 8, 1), Context 1, Stream 7, Device 0, CC 9.0
    Duration                         us         5.66
"""


def test_ncu_summary_reads_each_kernel(tmp_path):
    report = tmp_path / "ncu.txt"
    report.write_text(NCU_REPORT)
    script = str(ROOT / "scripts" / "ncu_summary.py")
    triton_only = subprocess.run([sys.executable, script, str(report)], capture_output=True, text=True, timeout=60)
    assert triton_only.returncode == 0, triton_only.stderr
    (line,) = triton_only.stdout.strip().splitlines()
    assert line == ("kernel=_state_fwd_kernel grid=2x33x8 warps=4 xu%=28.79 dram%=54.00 time=2.22 ms "
                    "spills=41,444,096 regs=255 occ%=12.14 | stalls: wait 1.20")
    everything = subprocess.run([sys.executable, script, str(report), "--all"], capture_output=True, text=True,
                                timeout=60)
    assert everything.stdout.strip().splitlines()[1] == "kernel=at::reduce_kernel<512, 1> grid=8x1x1 warps=16 time=5.66 us"


def test_ncu_summary_missing_report_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "ncu_summary.py"), str(tmp_path / "none.txt")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no ncu report at ")


def test_ab_script_bad_arguments_are_clear_errors(tmp_path):
    script = str(ROOT / "scripts" / "ab_triton_linear.py")
    missing = subprocess.run([sys.executable, script, str(tmp_path / "old.py"), "--maps", "cos"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1].startswith(f"error: no kernel file at {tmp_path / 'old.py'}; ")
    (tmp_path / "old.py").write_text("")
    bad_map = subprocess.run([sys.executable, script, str(tmp_path / "old.py"), "--maps", "cos,relu"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad_map.returncode != 0
    assert bad_map.stderr.strip().splitlines()[-1] == "error: unknown feature map 'relu' in --maps: choose from favor, elu, cos"


def _profile_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("profile_triton_linear", ROOT / "scripts" / "profile_triton_linear.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kernel(name: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur}


def test_timeline_splits_passes_and_measures_idle_time(capsys):
    prof = _profile_module()
    # Two passes of (a, memset, b), out of order, with a host op and a flow event that must be skipped.
    events = [
        _kernel("b", 1030.0, 60.0), _kernel("a", 1000.0, 20.0), {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5},
        {"ph": "X", "cat": "gpu_memset", "name": "Memset", "ts": 1022.0, "dur": 2.0}, {"ph": "f", "cat": "ac2g", "ts": 1},
        _kernel("a", 2000.0, 25.0), {"ph": "X", "cat": "gpu_memset", "name": "Memset", "ts": 2025.0, "dur": 2.0},
        _kernel("b", 2027.0, 61.0),
    ]
    passes = prof.split_passes(events, 2)
    assert [[a[0] for a in p] for p in passes] == [["a", "Memset", "b"]] * 2
    prof.print_timeline("favor", passes)
    head = capsys.readouterr().out.splitlines()[0]
    # pass 1: span 90 us, busy 82 us (gaps 2 + 6); pass 2: span 88 us, busy 88 us (no gap)
    assert head == ("timeline favor: 2 passes of 3 GPU activities; span median 0.089 ms (min 0.088, max 0.090); "
                    "busy median 0.085 ms; idle median 0.004 ms; largest gap 6.0 us (Memset -> b)")


def test_negative_timeline_is_a_clear_error():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "profile_triton_linear.py"), "--timeline", "-3"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --timeline -3: give a number of passes to trace, 1 or more (0: no timeline)")


def test_timeline_rejects_passes_that_differ():
    prof = _profile_module()
    events = [_kernel("a", 0.0, 1.0), _kernel("b", 2.0, 1.0), _kernel("a", 4.0, 1.0)]
    with pytest.raises(SystemExit) as exc:
        prof.split_passes(events, 2)
    assert str(exc.value) == "error: 3 GPU activities in 2 passes: passes differ, cannot split the trace"
