"""`make gpu-check`: the CPU half runs here; the CPU/CUDA comparison is checked on made-up records."""

import json


from viscoin_core import gpu_check


def test_records_within_tolerance_agree_and_others_are_named():
    a = {"iteration": 2, "split": "test", "n_images": 8, "g_accuracy": 50.0, "mse": 0.1, "seconds_per_iteration": 3.0}
    assert gpu_check.compare_records(a, {**a, "mse": 0.10005, "g_accuracy": 62.5, "seconds_per_iteration": 0.1}, "x") == []
    problems = gpu_check.compare_records(a, {**a, "mse": 0.1002, "g_accuracy": 75.0}, "it 2")
    assert len(problems) == 2 and all(p.startswith("it 2:") for p in problems)
    assert "mse" in problems[0] + problems[1] and "g_accuracy" in problems[0] + problems[1]


def test_logs_of_other_lengths_disagree():
    run = {"log": [{"iteration": 1}], "metrics": {}}
    assert "length" in gpu_check.compare(run, {"log": [], "metrics": {}})[0]


def test_without_a_gpu_the_cpu_half_runs_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "cuda_available", lambda: False)
    assert gpu_check.main(["--size", "smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device" in out and "CPU half done" in out
    report = json.loads((tmp_path / "report_smoke.json").read_text())
    assert report["problems"] == [] and "cuda" not in report
    assert report["cpu"]["metrics"]["n_test_images"] > 0 and report["cpu"]["log"]


def test_a_cuda_run_that_differs_fails_the_check(tmp_path, monkeypatch, capsys):
    # The CUDA half, played by the CPU with one number changed: the check must see it.
    monkeypatch.setattr(gpu_check, "cuda_available", lambda: True)
    monkeypatch.setattr(gpu_check, "describe_device", lambda: "a pretend GPU")
    real_run = gpu_check.run_row

    def run_row(params_file, device, run_dir):
        result = real_run(params_file, "cpu", run_dir)
        if device == "cuda":
            result["metrics"] = {**result["metrics"], "mse": result["metrics"]["mse"] * 1.01}
        return result
    monkeypatch.setattr(gpu_check, "run_row", run_row)
    assert gpu_check.main(["--size", "smoke", "--out", str(tmp_path)]) == 1
    assert "final evaluation: mse" in capsys.readouterr().err
