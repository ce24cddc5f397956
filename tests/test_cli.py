"""The `tvm-mpq` command line: help, the compile job's outputs, and clear errors."""

import json

import pytest

from tvm_mpq.cli import main


@pytest.mark.parametrize("command", [[], ["compile"], ["layers"], ["models"], ["profiles"]])
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: tvm-mpq" in out
    if command == ["compile"]:
        assert "runs that user code" in out and "--plan" in out and "--out" in out


def test_compile_writes_library_plan_and_summary(tmp_path, capsys):
    out = tmp_path / "w8a8"
    rc = main(["compile", "--model", "tiny_cnn", "--hw", "x86_avx2", "--plan", "w8a8", "--out", str(out),
               "--calib-samples", "8", "--eval-samples", "4", "--repeat", "3"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "output SQNR vs simulation (dB)" in printed and "latency (median, ms)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "model.so").stat().st_size > 0
    assert set(summary["layers"].values()) == {"W8A8"}
    assert summary["sqnr_vs_simulation_db"] >= 40.0
    assert summary["sqnr_vs_float_db"] > 20.0
    assert summary["latency_ms"]["median_ms"] > 0 and summary["latency_ms"]["repeats"] == 3
    # The written plan (with its calibrated ranges) compiles to the same model.
    again = tmp_path / "again"
    assert main(["compile", "--model", "tiny_cnn", "--hw", "x86_avx2", "--plan", str(out / "plan.yaml"),
                 "--out", str(again), "--calib-samples", "8", "--eval-samples", "4", "--repeat", "3"]) == 0
    summary2 = json.loads((again / "summary.json").read_text())
    assert summary2["layers"] == summary["layers"]
    assert summary2["sqnr_vs_float_db"] == pytest.approx(summary["sqnr_vs_float_db"])


def test_layers_lists_names_and_groups(capsys):
    assert main(["layers", "--model", "tiny_transformer"]) == 0
    out = capsys.readouterr().out
    assert "matmul" in out and "linear" in out and "quantizer groups" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no_such_model", "--hw", "x86_avx2"], "no_such_model"),
        (["--model", "tiny_cnn", "--hw", "no_such_device"], "no_such_device"),
        (["--model", "tiny_cnn", "--hw", "x86_avx2", "--plan", "w2a2"], "neither a file nor one of"),
    ],
)
def test_bad_input_gives_a_clear_error(args, message, tmp_path, capsys):
    assert main(["compile", *args, "--out", str(tmp_path / "o"), "--calib-samples", "2", "--eval-samples", "1"]) == 2
    err = capsys.readouterr().err
    assert "tvm-mpq: error:" in err and message in err


def test_bad_plan_file_names_the_line(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text("tvm_mpq_plan: 1\nlayers:\n  not_a_layer: W8A8\n")
    rc = main(["compile", "--model", "tiny_cnn", "--hw", "x86_avx2", "--plan", str(plan), "--out",
               str(tmp_path / "o"), "--calib-samples", "2", "--eval-samples", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "not_a_layer" in err and "plan.yaml:3" in err
